//! The `lienthong` binary: `check`, SIGHUP reload and SIGTERM drain.

use crate::support::*;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_lienthong");

fn repo(p: &str) -> String {
    format!("{}/{p}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_accepts_every_shipped_config() {
    for entry in std::fs::read_dir(repo("config")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            let out = Command::new(BIN)
                .arg("check")
                .arg("--config")
                .arg(&p)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                p.display(),
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
}

#[test]
fn check_reports_every_problem_with_its_key_path() {
    let dir = scratch_dir();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        r#"
[server]
drain_timeout = "30"
[log]
format = "xml"
[[listeners]]
name = "public"
listen = "nope"
[listeners.tls]
cert = "missing.pem"
key = "missing-key.pem"
[upstreams.demo]
endpoints = ["ftp://x", "http://ok:8080/path"]
balance = "random"
[[routes]]
auth.anonymous = true
path_prefix = "/a/../b"
upstream = "nope"
methods = ["GETT"]
[[routes]]
auth.anonymous = true
pth = "/typo"
"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "server.drain_timeout:",
        "log.format:",
        "listeners[0].listen:",
        "listeners[0].tls.cert:",
        "listeners[0].tls.key:",
        "upstreams.demo.endpoints[0]:",
        "upstreams.demo.endpoints[1]:",
        "upstreams.demo.balance:",
        "routes[0].path_prefix:",
        "routes[0].upstream:",
        "routes[0].methods[0]:",
        "routes[1]: unknown field `pth`",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary and reads its JSON log until the listener address appears.
fn spawn(config: &std::path::Path) -> (Proc, SocketAddr, SocketAddr) {
    let (p, a, b, _) = spawn_logged(config);
    (p, a, b)
}

/// Like `spawn`, also keeping every log line the process writes.
fn spawn_logged(
    config: &std::path::Path,
) -> (
    Proc,
    SocketAddr,
    SocketAddr,
    Arc<std::sync::Mutex<Vec<String>>>,
) {
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut public = None;
    let mut admin = None;
    while public.is_none() || admin.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("gateway logged its addresses");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        let f = &v["fields"];
        if f["message"] == "listening" {
            public = f["addr"].as_str().and_then(|a| a.parse().ok());
        }
        if f["message"] == "admin listening" {
            admin = f["a"].as_str().and_then(|a| a.parse().ok());
        }
    }
    // Keep draining the log so the child never blocks on a full pipe.
    let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = lines.clone();
    std::thread::spawn(move || {
        while let Ok(l) = rx.recv() {
            keep.lock().unwrap().push(l);
        }
    });
    (Proc(child), public.unwrap(), admin.unwrap(), lines)
}

fn file_config(upstream: &str, prefix: &str) -> String {
    format!(
        r#"
[server]
drain_timeout = "10s"
[log]
format = "json"
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
[upstreams.u]
endpoints = ["{upstream}"]
[[routes]]
auth.anonymous = true
name = "r"
path_prefix = "{prefix}"
upstream = "u"
"#
    )
}

fn signal(p: &Proc, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(p.0.id().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[tokio::test]
async fn sighup_reloads_and_sigterm_drains() {
    let slow: Handler = Arc::new(|s| {
        if s.uri.ends_with("/slow") {
            Action::Delay(
                Duration::from_millis(700),
                json_response(200, serde_json::json!({"slow": true})),
            )
        } else {
            Action::Respond(json_response(200, serde_json::json!({"uri": s.uri})))
        }
    });
    let up = MockUpstream::start(slow).await;
    let dir = scratch_dir();
    let path = dir.join("lienthong.toml");
    std::fs::write(&path, file_config(&up.url(), "/")).unwrap();
    let (mut proc_, addr, _admin) = tokio::task::spawn_blocking({
        let path = path.clone();
        move || spawn(&path)
    })
    .await
    .unwrap();
    assert_eq!(raw_get(addr, "/a").await.status, 200);

    // SIGHUP: the new route table takes effect; an invalid file keeps the old one.
    std::fs::write(&path, file_config(&up.url(), "/only")).unwrap();
    signal(&proc_, "HUP");
    eventually("reload applied", Duration::from_secs(10), || async {
        raw_get(addr, "/a").await.status == 404
    })
    .await;
    assert_eq!(raw_get(addr, "/only/x").await.status, 200);
    std::fs::write(&path, "this is not toml").unwrap();
    signal(&proc_, "HUP");
    // The bad file is refused; give the process a moment by making a request that
    // must still be served by the old table.
    for _ in 0..5 {
        assert_eq!(raw_get(addr, "/only/x").await.status, 200);
    }

    // SIGTERM with a request in flight: it completes, then the process exits 0.
    let before = up.count();
    let in_flight = tokio::spawn(async move { raw_get(addr, "/only/slow").await });
    eventually("slow request upstream", Duration::from_secs(5), || async {
        up.count() == before + 1
    })
    .await;
    signal(&proc_, "TERM");
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["slow"], true);
    let status = tokio::task::spawn_blocking(move || {
        let s = proc_.0.wait().unwrap();
        std::mem::forget(proc_);
        s
    })
    .await
    .unwrap();
    assert!(status.success(), "exit status {status:?}");
}

/// SIGKILL under heavy traffic: afterwards `lienthong audit verify` passes and every
/// response a fail-closed route gave has its record; the gateway restarts on the
/// same log and goes on.
#[tokio::test]
async fn audit_survives_sigkill_under_load() {
    let up = MockUpstream::start(echo("up")).await;
    let dir = scratch_dir();
    let path = dir.join("lienthong.toml");
    let key = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/dev/audit-signing.key.pem"
    );
    let cfg = file_config(&up.url(), "/")
        .replace("upstream = \"u\"\n", "upstream = \"u\"\naudit = \"fail_closed\"\n")
        + &format!("[audit]\ndb = \"audit.db\"\norigin = \"crash-test\"\nkey = \"{key}\"\ncheckpoint_every_records = 50\n");
    std::fs::write(&path, &cfg).unwrap();
    for round in 0..2 {
        let (proc_, addr, _admin) = tokio::task::spawn_blocking({
            let path = path.clone();
            move || spawn(&path)
        })
        .await
        .unwrap();
        let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut clients = Vec::new();
        for c in 0..16 {
            let acked = acked.clone();
            clients.push(tokio::spawn(async move {
                for i in 0..10_000 {
                    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                        return;
                    };
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let req = format!(
                        "GET /r{round}/c{c}/{i} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                    );
                    if s.write_all(req.as_bytes()).await.is_err() {
                        return;
                    }
                    let mut buf = Vec::new();
                    if s.read_to_end(&mut buf).await.is_err() {
                        return;
                    }
                    if let Some(r) = parse_complete(&buf) {
                        if r.status == 200 {
                            acked
                                .lock()
                                .unwrap()
                                .push(r.header("x-request-id").unwrap().to_string());
                        }
                    }
                }
            }));
        }
        eventually("traffic flowing", Duration::from_secs(20), || async {
            acked.lock().unwrap().len() > 200
        })
        .await;
        signal(&proc_, "KILL");
        for c in clients {
            let _ = c.await;
        }
        drop(proc_);
        let acked = acked.lock().unwrap().clone();
        let out = Command::new(BIN)
            .args(["audit", "verify", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let db = dir.join("audit.db");
        let recs = lienthong::audit::writer::query(
            &db,
            &lienthong::store::audit::Filter {
                limit: Some(1_000_000),
                ..Default::default()
            },
        )
        .unwrap();
        let logged: std::collections::HashSet<String> =
            recs.into_iter().map(|(_, r)| r.request_id).collect();
        let missing: Vec<&String> = acked.iter().filter(|id| !logged.contains(*id)).collect();
        assert!(
            missing.is_empty(),
            "round {round}: {} acknowledged responses without a record",
            missing.len()
        );
    }
}

/// Tokens, upstream secrets and access tokens never reach the logs (debug level, every
/// access line) nor the audit records.
#[tokio::test]
async fn no_tokens_or_secrets_in_logs() {
    let idp = MockUpstream::start(Arc::new(|_| {
        Action::Respond(json_response(
            200,
            serde_json::json!({"access_token": "upstream-access-token-xyz", "expires_in": 600}),
        ))
    }))
    .await;
    let up = MockUpstream::start(Arc::new(|_| {
        Action::Respond(json_response(401, serde_json::json!({})))
    }))
    .await;
    let dir = scratch_dir();
    std::fs::write(dir.join("client-secret"), "file-held-client-secret-99\n").unwrap();
    let path = dir.join("lienthong.toml");
    let repo = env!("CARGO_MANIFEST_DIR");
    let cfg = file_config(&up.url(), "/").replace("auth.anonymous = true\n", "auth = {}\n")
        + &format!(
            r#"
[[auth.issuers]]
name = "dev"
iss = "lienthong-dev"
audiences = ["lienthong"]
algorithms = ["EdDSA"]
public_key = "{repo}/config/dev/dev-issuer.pub.pem"
[upstreams.idp]
endpoints = ["{idp}"]
[upstreams.u.credentials]
type = "oauth2"
token_upstream = "idp"
client_id = "lienthong"
client_secret = {{ file = "client-secret" }}
[audit]
db = "audit.db"
key = "{repo}/config/dev/audit-signing.key.pem"
"#,
            idp = idp.url()
        );
    let cfg = cfg.replace(
        "[log]\nformat = \"json\"",
        "[log]\nformat = \"json\"\nlevel = \"debug\"",
    );
    std::fs::write(&path, &cfg).unwrap();
    let (proc_, addr, _admin, lines) = tokio::task::spawn_blocking({
        let path = path.clone();
        move || spawn_logged(&path)
    })
    .await
    .unwrap();
    let key = std::fs::read(format!("{repo}/config/dev/dev-issuer.key.pem")).unwrap();
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
    for t in [token.as_str(), "forged.token.value"] {
        let r = raw(addr, format!("GET /x?access_token=query-token-123 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n").as_bytes()).await;
        assert!(
            r.status == 401 || r.status == 200 || r.status == 502,
            "{}",
            r.status
        );
        let r = raw(addr, format!("GET /dan-cu/079201001234 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n").as_bytes()).await;
        assert!(r.status < 600);
    }
    // The upstream answered 401 with our credential: one re-authentication happened.
    assert!(idp.count() >= 2);
    signal(&proc_, "TERM");
    let status = tokio::task::spawn_blocking(move || {
        let mut p = proc_;
        let s = p.0.wait().unwrap();
        std::mem::forget(p);
        s
    })
    .await
    .unwrap();
    assert!(status.success());
    let log = lines.lock().unwrap().join("\n");
    assert!(log.contains("\"access\""), "access lines are logged");
    let recs = lienthong::audit::writer::query(
        &dir.join("audit.db"),
        &lienthong::store::audit::Filter {
            limit: Some(1000),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(recs.len(), 4, "one audit record per request");
    let audit: String = recs
        .iter()
        .map(|(_, r)| String::from_utf8(r.to_json()).unwrap())
        .collect();
    for secret in [
        token.as_str(),
        &token[token.len() - 20..],
        "forged.token.value",
        "file-held-client-secret-99",
        "upstream-access-token-xyz",
        "query-token-123",
    ] {
        assert!(!log.contains(secret), "secret {secret:?} in the logs");
        assert!(
            !audit.contains(secret),
            "secret {secret:?} in the audit log"
        );
    }
}

/// Clients submit dossiers continuously (retrying with the same Idempotency-Key until
/// they get a receipt) while the gateway is SIGKILLed at random moments and restarted,
/// 20 times. At the end every dossier that got a 202 has reached the destination at
/// least once with the content the client sent, and nothing was delivered under a code
/// no client was given.
#[tokio::test]
async fn intake_survives_repeated_sigkill() {
    use std::collections::{HashMap, HashSet};
    use std::sync::atomic::{AtomicBool, Ordering};
    let dest = MockUpstream::start(Arc::new(|_| {
        Action::Respond(json_response(200, serde_json::json!({})))
    }))
    .await;
    let port = dead_addr().await.port();
    let dir = scratch_dir();
    let path = dir.join("lienthong.toml");
    let cfg = format!(
        r#"
[log]
format = "json"
level = "warn"
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "public"
listen = "127.0.0.1:{port}"
[upstreams.dest]
endpoints = ["{dest}"]
[exchange]
db = "exchange.db"
destinations = ["so"]
auth = {{ anonymous = true }}
backoff_base = "20ms"
backoff_cap = "100ms"
delivery_timeout = "1s"
[exchange.deliveries]
so = {{ upstream = "dest", path = "/so/hoso" }}
"#,
        dest = dest.url()
    );
    std::fs::write(&path, cfg).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let acked: Arc<std::sync::Mutex<HashMap<String, serde_json::Value>>> = Arc::default(); // code -> body sent
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..6 {
        let (acked, stop) = (acked.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let summary = format!("client {c} dossier {i}");
                let sent = serde_json::json!({
                    "procedure_code": "3.000182.000.00.00.H22", "receiving_unit": "000.00.01.H22",
                    "channel": "2", "summary": summary, "status": "1", "received_at": "20251126083000",
                    "applicant": {"name": "Nguyễn Văn A", "kind": "1", "id_number": "022090000001"}
                });
                let body = sent.to_string();
                let req = format!(
                    "POST /v1/dossiers HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nIdempotency-Key: c{c}-{i}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                // Same key until a receipt arrives: the gateway may die at any moment.
                loop {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let attempt = async {
                        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
                        s.write_all(req.as_bytes()).await.ok()?;
                        let mut buf = Vec::new();
                        s.read_to_end(&mut buf).await.ok()?;
                        parse_complete(&buf)
                    };
                    match attempt.await {
                        Some(r) if r.status == 202 => {
                            let code = r.json()["dossier_code"].as_str().unwrap().to_string();
                            acked.lock().unwrap().insert(code, sent.clone());
                            break;
                        }
                        Some(r) => assert!(r.status == 503, "unexpected {}", r.status),
                        None => {}
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                i += 1;
            }
        }));
    }
    // A small deterministic generator for the kill moments (no test randomness crate).
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    for round in 0..20 {
        let (proc_, _a, _admin) = tokio::task::spawn_blocking({
            let path = path.clone();
            move || spawn(&path)
        })
        .await
        .unwrap();
        let before = acked.lock().unwrap().len();
        eventually(
            "progress before the kill",
            Duration::from_secs(20),
            || async { acked.lock().unwrap().len() > before },
        )
        .await;
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(seed % 40)).await; // the random kill moment
        signal(&proc_, "KILL");
        drop(proc_);
        let _ = round;
    }
    // Last life: clients finish their current dossier, then everything must drain.
    let (_proc, _a, _admin) = tokio::task::spawn_blocking({
        let path = path.clone();
        move || spawn(&path)
    })
    .await
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 20);
    eventually(
        "every acknowledged dossier delivered",
        Duration::from_secs(30),
        || async {
            let seen: HashSet<String> = dest
                .seen
                .lock()
                .unwrap()
                .iter()
                .filter_map(|s| s.header("x-lienthong-dossier").map(str::to_string))
                .collect();
            acked.keys().all(|c| seen.contains(c))
        },
    )
    .await;
    for s in dest.seen.lock().unwrap().iter() {
        let code = s.header("x-lienthong-dossier").unwrap();
        let sent = acked
            .get(code)
            .unwrap_or_else(|| panic!("delivered under {code}, a code no client was given"));
        let body: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
        // The declared translation is the canonical model: what arrives is exactly the
        // client's dossier in canonical form, plus the code the gateway assigned.
        let mut expected =
            lienthong::exchange::dossier::parse_dossier(sent.to_string().as_bytes()).unwrap();
        expected.code = Some(code.to_string());
        assert_eq!(
            body,
            serde_json::to_value(&expected).unwrap(),
            "content changed for {code}"
        );
    }
}
