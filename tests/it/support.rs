//! Test harness: mock upstreams on ephemeral loopback ports, an in-process gateway
//! built from config text, raw-socket and hyper clients. No fixed ports; waits are
//! polls for a condition with a deadline, never sleeps standing in for synchronisation.

#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lienthong::config::Config;
use lienthong::runtime::Gateway;
use lienthong::server::Server;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// What a mock upstream saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub conn_id: usize,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What a mock upstream does with a request.
pub enum Action {
    Respond(Response<Full<Bytes>>),
    /// Never answer (until the connection is dropped).
    Hang,
    /// Answer after a delay (time for the test to act in between).
    Delay(Duration, Response<Full<Bytes>>),
}

pub type Handler = Arc<dyn Fn(&Seen) -> Action + Send + Sync>;

pub struct MockUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn json_response(status: u16, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(serde_json::to_vec(&body).unwrap())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

/// Echoes what it saw as JSON, tagged with `name`.
pub fn echo(name: &'static str) -> Handler {
    Arc::new(move |s: &Seen| {
        let headers: HashMap<String, String> = s
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        Action::Respond(json_response(
            200,
            serde_json::json!({
                "upstream": name,
                "method": s.method,
                "uri": s.uri,
                "headers": headers,
                "body_len": s.body.len(),
            }),
        ))
    })
}

/// An upstream answering with the `Authorization` it was sent.
pub fn echo_authorization() -> Handler {
    Arc::new(|s: &Seen| {
        Action::Respond(json_response(
            200,
            serde_json::json!({"auth": s.header("authorization")}),
        ))
    })
}

pub fn status(code: u16) -> Handler {
    Arc::new(move |_| Action::Respond(json_response(code, serde_json::json!({"status": code}))))
}

impl MockUpstream {
    pub async fn start(handler: Handler) -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, handler, None).await
    }

    pub async fn start_tls(handler: Handler, tls: Arc<rustls::ServerConfig>) -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, handler, Some(tls)).await
    }

    async fn serve(
        listener: TcpListener,
        handler: Handler,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> MockUpstream {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let seen2 = seen.clone();
        let conns2 = connections.clone();
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = &mut stop_rx => break,
                };
                let conn_id = conns2.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                let seen = seen2.clone();
                let tls = tls.clone();
                tasks.push(tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let handler = handler.clone();
                        let seen = seen.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let s = Seen {
                                method: parts.method.to_string(),
                                uri: parts.uri.to_string(),
                                version: parts.version,
                                headers: parts.headers,
                                body,
                                conn_id,
                            };
                            seen.lock().unwrap().push(s.clone());
                            match handler(&s) {
                                Action::Respond(r) => Ok::<_, std::convert::Infallible>(r),
                                Action::Delay(d, r) => {
                                    tokio::time::sleep(d).await;
                                    Ok(r)
                                }
                                Action::Hang => {
                                    std::future::pending::<()>().await;
                                    unreachable!()
                                }
                            }
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(cfg) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                            if let Ok(s) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                                    .await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                                .await;
                        }
                    }
                }));
            }
            for t in tasks {
                t.abort();
            }
        });
        MockUpstream {
            addr,
            seen,
            connections,
            stop: Some(stop_tx),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw a request")
    }
}

/// An address nothing listens on (bound then released).
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh scratch folder under the system temp dir.
pub fn scratch_dir() -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("lienthong-it-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A gateway running in-process on ephemeral ports.
pub struct TestGateway {
    pub gw: Arc<Gateway>,
    pub addrs: Vec<(String, SocketAddr)>,
    pub admin: Option<SocketAddr>,
    pub config_path: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    pub done: Option<tokio::task::JoinHandle<()>>,
}

impl TestGateway {
    /// Starts from config text (written to a scratch file so reload works).
    pub async fn start(config: &str) -> TestGateway {
        let dir = scratch_dir();
        let path = dir.join("lienthong.toml");
        std::fs::write(&path, config).unwrap();
        Self::start_file(path).await
    }

    pub async fn start_file(path: PathBuf) -> TestGateway {
        let cfg = Config::load(&path).unwrap_or_else(|p| panic!("test config invalid:\n{p}"));
        let gw = Gateway::new(cfg).unwrap_or_else(|p| panic!("{p}"));
        let server = Server::bind(gw.clone()).await.unwrap();
        let addrs = server.addrs.clone();
        let admin = server.admin_addr;
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            server
                .run(async move {
                    let _ = rx.await;
                })
                .await;
        });
        TestGateway {
            gw,
            addrs,
            admin,
            config_path: path,
            stop: Some(tx),
            done: Some(done),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0].1
    }

    pub fn addr_of(&self, name: &str) -> SocketAddr {
        self.addrs.iter().find(|(n, _)| n == name).unwrap().1
    }

    /// Begins graceful shutdown; returns the task that ends when the drain is done.
    pub fn shutdown(&mut self) -> tokio::task::JoinHandle<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.done.take().unwrap()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A minimal config with one listener on an ephemeral port and admin on another.
pub fn base_config(extra: &str) -> String {
    // Every test gateway keeps an audit log in its own scratch folder, so the whole
    // suite exercises the audit stage.
    format!(
        r#"
[audit]
db = "audit.db"
origin = "lienthong-test/audit"
key = "{key}"
checkpoint_every = "100ms"
[log]
access_log = false
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
header_read_timeout = "2s"
{extra}
"#,
        key = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/dev/audit-signing.key.pem"
        ),
    )
}

/// [`base_config`] without the audit log (a gateway that keeps none).
pub fn plain_config(extra: &str) -> String {
    let full = base_config(extra);
    let start = full
        .find("[audit]")
        .expect("base_config has an audit section");
    let end = full.find("[log]").expect("base_config has a log section");
    format!("{}{}", &full[..start], &full[end..])
}

/// How many requests a gateway has served on its HTTP/1 fast path.
pub fn fast_path_requests(gw: &TestGateway) -> u64 {
    gw.gw
        .fast_path_requests
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// A parsed HTTP/1 response from a raw exchange.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Sends bytes exactly as given and reads one response (connection closed after).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut chunk = [0u8; 8192];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(r) = parse_complete(&buf) {
                        return Some(r);
                    }
                }
            }
        }
        parse_complete(&buf)
    })
    .await;
    read.ok().flatten().unwrap_or_else(|| {
        panic!(
            "no complete response; got {:?}",
            String::from_utf8_lossy(&buf)
        )
    })
}

/// Parses a response once the head and a Content-Length body (or chunked body) are complete.
pub fn parse_complete(buf: &[u8]) -> Option<RawResponse> {
    parse_with_len(buf).map(|(r, _)| r)
}

/// [`parse_complete`], and how many bytes of `buf` the response took (a chunked body's
/// last chunk without trailers).
pub fn parse_with_len(buf: &[u8]) -> Option<(RawResponse, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &buf[end + 4..];
    let find = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut used = end + 4;
    let body = if let Some(len) = find("content-length").filter(|_| status != 304) {
        let len: usize = len.parse().ok()?;
        if rest.len() < len {
            return None;
        }
        used += len;
        rest[..len].to_vec()
    } else if find("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        let mut out = Vec::new();
        let mut r = rest;
        loop {
            let le = r.windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&r[..le]).ok()?.trim(), 16).ok()?;
            r = &r[le + 2..];
            if size == 0 {
                if r.len() < 2 {
                    return None;
                }
                used = buf.len() - r.len() + 2;
                break;
            }
            if r.len() < size + 2 {
                return None;
            }
            out.extend_from_slice(&r[..size]);
            r = &r[size + 2..];
        }
        out
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else {
        return None;
    };
    Some((
        RawResponse {
            status,
            headers,
            body,
        },
        used,
    ))
}

/// A GET with `Connection: close` for the given raw target.
pub async fn raw_get(addr: SocketAddr, target: &str) -> RawResponse {
    raw(
        addr,
        format!("GET {target} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
}

/// A hyper HTTP/1 client request; returns status, headers and body.
pub async fn send(
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let rsp = sender.send_request(req).await.unwrap();
    let (parts, body) = rsp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

pub fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "test.local")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Polls `f` until it returns true or the deadline passes.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return;
        }
        if start.elapsed() > timeout {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GET on the admin listener; returns status and body text.
/// A request to the admin listener, addressed to it by its IP address as a tool on the
/// host would (`extra`: further header lines, each ending in CRLF).
pub async fn admin_raw(gw: &TestGateway, method: &str, path: &str, extra: &str) -> RawResponse {
    let addr = gw.admin.unwrap();
    raw(
        addr,
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
}

pub async fn admin_get(gw: &TestGateway, path: &str) -> (u16, String) {
    let r = admin_raw(gw, "GET", path, "").await;
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

pub async fn admin_post(gw: &TestGateway, path: &str) -> (u16, String) {
    let r = admin_raw(gw, "POST", path, "").await;
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

/// Checks the JSON error contract: code, message and request id (matching the header).
pub fn assert_error(r: &RawResponse, status: u16, code: &str) {
    assert_eq!(
        r.status,
        status,
        "status; body: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    let j = r.json();
    assert_eq!(j["code"], code, "{j}");
    assert!(j["message"].as_str().is_some_and(|m| !m.is_empty()), "{j}");
    let rid = j["request_id"].as_str().expect("request_id");
    assert!(!rid.is_empty());
    assert_eq!(r.header("x-request-id"), Some(rid));
}

/// The development issuer of `config/dev/` (throwaway keys), as a config fragment.
pub fn dev_issuer() -> String {
    format!(
        "[[auth.issuers]]\nname = \"dev\"\niss = \"lienthong-dev\"\naudiences = [\"lienthong\"]\nalgorithms = [\"EdDSA\"]\npublic_key = \"{}/config/dev/dev-issuer.pub.pem\"\n",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// A token from the development issuer for `agency`, valid for ten minutes.
pub fn dev_token(agency: &str) -> String {
    dev_token_with(serde_json::json!({ "agency": agency }))
}

/// A token from the development issuer, valid for ten minutes, with `claims` set over
/// its defaults (subject `s`).
pub fn dev_token_with(claims: serde_json::Value) -> String {
    let key = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/dev/dev-issuer.key.pem"
    ))
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut all = serde_json::json!({
        "iss": "lienthong-dev", "aud": "lienthong", "sub": "s",
        "iat": now, "exp": now + 600,
    });
    for (k, v) in claims.as_object().expect("claims as an object") {
        all[k] = v.clone();
    }
    lienthong::auth::jwt::mint(&key, jsonwebtoken::Algorithm::EdDSA, all, None).unwrap()
}

/// A canonical dossier (hồ sơ) as JSON, filed with `000.00.01.H22`, with `code` when given.
pub fn dossier_json(code: Option<&str>, summary: &str) -> String {
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

/// A DVCQG-like counterpart with logins: `POST /login` answers the sessions `S1`, `S2`, …
/// (counting them in `logins`); any other call is refused with DVCQG's "session
/// expired" (`error_code` -1) when it carries `S1`, and accepted otherwise.
pub fn dvcqg_with_logins(logins: Arc<std::sync::atomic::AtomicUsize>) -> Handler {
    Arc::new(move |s: &Seen| {
        if s.uri == "/login" {
            let n = logins.fetch_add(1, Ordering::SeqCst) + 1;
            return Action::Respond(json_response(
                200,
                serde_json::json!({"error_code": 0, "session": format!("S{n}")}),
            ));
        }
        let body: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
        let answer = if body["session"] == "S1" {
            serde_json::json!({"error_code": "-1", "message": "Phiên làm việc hết hạn"})
        } else {
            serde_json::json!({"error_code": "0", "message": "Thành công"})
        };
        Action::Respond(json_response(200, answer))
    })
}

/// An upstream for one exchange written by hand: accepts one connection, reads a request
/// head, and hands the connection to `script`, which answers as it likes (part of a body,
/// pauses, nothing). Returns its address.
pub async fn scripted_upstream<F, Fut>(script: F) -> SocketAddr
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        script(s).await;
    });
    addr
}

/// Lowercase hex SHA-256, as audit records give digests.
pub fn sha256_hex(b: &[u8]) -> String {
    lienthong::body::sha256(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}
