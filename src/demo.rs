//! `lienthong demo`: the gateway and the sandbox counterparts in one process, a scripted
//! dossier (hồ sơ) exchange through the intake channel, an outage of the DVCQG counterpart
//! and its recovery, and a readable trace of where each dossier went and when.
//!
//! The demo never touches the operator's data or ports: the audit and exchange databases go
//! to a fresh temporary folder (removed at the end) and every listener binds an ephemeral
//! loopback port. Only the sandbox listens where the config's `sandbox` upstream points,
//! since that is where the gateway delivers. Delivery backoff, passive ejection and the
//! circuit breaker of the sandbox upstream are shortened so that the outage resolves in
//! seconds; the trace says so.
//!
//! The gateway is driven only through the APIs an integrator or operator uses: `POST
//! /v1/dossiers`, events and evaluations, `GET /v1/dossiers/{code}` and the admin outbox.
//! The sandbox is switched and read directly ([`Sandbox::set_mode`], [`Sandbox::received`]),
//! and each delivery's attempt log comes from the store (it has no HTTP API yet).

use crate::body::Body;
use crate::config::Config;
use crate::exchange::dossier::{TrangThaiHoSo, VnDateTime};
use crate::runtime::Gateway;
use crate::sandbox::{Mode, Sandbox};
use crate::server::Server;
use crate::store::exchange::ExchangeStore;
use http::{header, Method, Request};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Display;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The destination the demo takes down and brings back.
const DESTINATION: &str = "dvcqg";
/// The upstream pool the sandbox must serve.
const SANDBOX_UPSTREAM: &str = "sandbox";
/// The agency (mã định danh) the demo files as; the default intake accepts `*.H22`.
const AGENCY: &str = "000.00.01.H22";
/// How often the demo looks at the outbox while waiting.
const POLL: Duration = Duration::from_millis(50);
/// How long the demo waits for deliveries to settle before calling it a failure.
const SETTLE: Duration = Duration::from_secs(30);
/// Demo timings (the config's own values are kept when they are shorter already).
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(2);
const EJECTION: Duration = Duration::from_secs(1);
const BREAKER_OPEN: Duration = Duration::from_secs(1);

/// The canonical dossier the DVCQG adapter's fixtures are built from.
const FIXTURE_DOSSIER: &str = include_str!("../adapters/dvcqg/fixtures/dossier.json");

/// What a demo run established.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Dossier codes accepted with 202, in filing order.
    pub accepted: Vec<String>,
    /// Of those, the ones filed while DVCQG was down.
    pub filed_during_outage: Vec<String>,
    /// Outbox items (one per dossier or event and destination), and how many were delivered.
    pub outbox_items: usize,
    pub delivered: usize,
    /// Delivery attempts that failed while DVCQG was down (each was retried).
    pub failed_attempts_during_outage: usize,
    /// Messages the sandbox DVCQG accepted.
    pub sandbox_received: usize,
    /// Why the run failed; empty when everything was accepted and delivered.
    pub problems: Vec<String>,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// `lienthong demo --config PATH`: exit 0 when everything was delivered, 1 otherwise.
pub fn run(path: &Path) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(problems) => {
            for p in &problems.0 {
                eprintln!("{p}");
            }
            eprintln!(
                "{}: {} problem(s); not starting the demo",
                path.display(),
                problems.0.len()
            );
            return ExitCode::FAILURE;
        }
    };
    let rt = match crate::cli::current_thread_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let mut out = std::io::stdout();
    match rt.block_on(run_with(cfg, &mut out)) {
        Ok(s) if s.ok() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!(
                "lienthong demo: FAILED: {} (and {} more problem(s) listed above)",
                s.problems.first().map(String::as_str).unwrap_or("?"),
                s.problems.len().saturating_sub(1)
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("lienthong demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the demo on `cfg` (its databases and listeners are redirected, see the module
/// documentation), writing the trace to `out`. `Err` when the demo could not run at all
/// (config without the sandbox, port busy, a refused intake); a run whose deliveries did
/// not all arrive is `Ok` with [`Summary::problems`].
pub async fn run_with(mut cfg: Config, out: &mut impl Write) -> Result<Summary, String> {
    let sandbox_at = prepare(&mut cfg)?;
    let timings = shorten_timings(&mut cfg);
    let dir = scratch_dir()?;
    if let Some(a) = cfg.audit.as_mut() {
        a.db = dir.join("audit.db");
    }
    if let Some(x) = cfg.exchange.as_mut() {
        x.db = dir.join("exchange.db");
    }
    let result = run_in(cfg, &dir, &sandbox_at, &timings, out).await;
    let _ = std::fs::remove_dir_all(&dir);
    if result.is_ok() {
        let _ = writeln!(out, "\nGateway stopped; removed {}.", dir.display());
    }
    result
}

/// Checks the config has what the demo drives, and redirects listeners to ephemeral ports.
/// Returns where the sandbox must listen.
fn prepare(cfg: &mut Config) -> Result<String, String> {
    let up = cfg.upstreams.get(SANDBOX_UPSTREAM).ok_or(
        "the config has no [upstreams.sandbox]: the demo delivers to the sandbox counterpart",
    )?;
    let ep = up
        .endpoints
        .first()
        .ok_or("[upstreams.sandbox] has no endpoint")?;
    if ep.https {
        return Err(format!(
            "[upstreams.sandbox] points at {ep}; the sandbox speaks plain HTTP on loopback"
        ));
    }
    let x = cfg
        .exchange
        .as_ref()
        .ok_or("the config has no [exchange]: the demo files dossiers through the intake")?;
    match x.deliveries.get(DESTINATION) {
        Some((u, _)) if u == SANDBOX_UPSTREAM => {}
        _ => {
            return Err(format!(
                "the demo needs [exchange.deliveries.{DESTINATION}] with upstream = \"{SANDBOX_UPSTREAM}\""
            ))
        }
    }
    if !x.destinations.iter().any(|d| d == DESTINATION) {
        return Err(format!(
            "the demo needs \"{DESTINATION}\" in [exchange] destinations"
        ));
    }
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    for l in &mut cfg.listeners {
        l.listen = loopback;
    }
    if cfg.listeners.is_empty() {
        return Err("the config has no [[listeners]]".into());
    }
    cfg.admin.listen = Some(loopback);
    // A reload would re-read the operator's file, with its real databases and ports.
    cfg.source = None;
    Ok(ep.authority.clone())
}

/// Shortens delivery backoff and the sandbox upstream's ejection and breaker; returns the
/// line that says so.
fn shorten_timings(cfg: &mut Config) -> String {
    use crate::config::format_duration as f;
    let mut parts = Vec::new();
    if let Some(x) = cfg.exchange.as_mut() {
        let (b, c) = (x.backoff_base, x.backoff_cap);
        x.backoff_base = b.min(BACKOFF_BASE);
        x.backoff_cap = c.min(BACKOFF_CAP).max(x.backoff_base);
        parts.push(format!(
            "delivery backoff {}…{} (config: {}…{})",
            f(x.backoff_base),
            f(x.backoff_cap),
            f(b),
            f(c)
        ));
    }
    if let Some(u) = cfg.upstreams.get_mut(SANDBOX_UPSTREAM) {
        let e = u.passive.ejection_time;
        u.passive.ejection_time = e.min(EJECTION);
        let o = u.circuit_breaker.open_for;
        u.circuit_breaker.open_for = o.min(BREAKER_OPEN);
        parts.push(format!(
            "sandbox endpoint ejection {} (config: {}), breaker open {} (config: {})",
            f(u.passive.ejection_time),
            f(e),
            f(u.circuit_breaker.open_for),
            f(o)
        ));
    }
    parts.join(", ")
}

fn scratch_dir() -> Result<PathBuf, String> {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = match n {
        0 => format!("lienthong-demo-{}", std::process::id()),
        n => format!("lienthong-demo-{}-{n}", std::process::id()),
    };
    let dir = std::env::temp_dir().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// Starts the sandbox and the gateway, runs the script, and shuts both down.
async fn run_in(
    cfg: Config,
    dir: &Path,
    sandbox_at: &str,
    timings: &str,
    out: &mut impl Write,
) -> Result<Summary, String> {
    let token = crate::cli::mint_token(&cfg, None, "demo-officer", AGENCY, "", "", None, "15m")
        .map_err(|e| format!("cannot mint a token for the intake: {e}"))?;
    let issuer = cfg
        .auth
        .issuers
        .iter()
        .find(|i| i.dev_signing_key.is_some())
        .map(|i| i.name.clone())
        .unwrap_or_default();
    let sb = Arc::new(Sandbox::default());
    let listener = tokio::net::TcpListener::bind(sandbox_at)
        .await
        .map_err(|e| {
            format!(
                "the sandbox cannot listen on {sandbox_at}, where [upstreams.sandbox] points: {e}. \
                 Is `lienthong sandbox` (or another demo) running? Stop it, or point the sandbox \
                 upstream at a free port in a copy of the config."
            )
        })?;
    let sandbox_task = tokio::spawn(crate::sandbox::serve(listener, sb.clone()));
    let gw = match Gateway::new(cfg) {
        Ok(g) => g,
        Err(p) => {
            sandbox_task.abort();
            return Err(p.to_string());
        }
    };
    let server = match Server::bind(gw.clone()).await {
        Ok(s) => s,
        Err(e) => {
            stop_exchange(&gw).await;
            sandbox_task.abort();
            return Err(e);
        }
    };
    let (public, admin) = match (server.addrs.first(), server.admin_addr) {
        (Some((_, p)), Some(a)) => (*p, a),
        _ => {
            stop_exchange(&gw).await;
            sandbox_task.abort();
            return Err("the gateway started without a public or an admin listener".into());
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));

    let mut tr = Trace::new(out);
    tr.raw(format!(
        "lienthong demo — the gateway and the sandbox counterparts in one process\n\
         \x20 data      {} (temporary; removed at the end)\n\
         \x20 gateway   intake http://{public}, admin http://{admin} (ephemeral ports)\n\
         \x20 sandbox   DVCQG-like portal and SOAP agency on {sandbox_at} (upstream \"{SANDBOX_UPSTREAM}\")\n\
         \x20 caller    JWT of issuer \"{issuer}\" for agency {AGENCY}, minted as `lienthong token` does\n\
         \x20 timings   shortened for the demo: {timings}",
        dir.display()
    ));
    let api = Api {
        client: Client::builder(TokioExecutor::new()).build_http(),
        public,
        admin,
        token,
    };
    let mut demo = Demo {
        api,
        sb: sb.clone(),
        gw: gw.clone(),
        tr,
        labels: BTreeMap::new(),
        printed: BTreeMap::new(),
        who: BTreeMap::new(),
        explained: Default::default(),
        summary: Summary::default(),
    };
    let result = demo.script().await;
    let Demo {
        api, mut summary, ..
    } = demo;
    // Idle keep-alive connections close with the client, so the drain finishes at once.
    drop(api);
    let _ = stop_tx.send(());
    let _ = serving.await;
    stop_exchange(&gw).await;
    sandbox_task.abort();
    drop(gw);
    result?;
    summary.sandbox_received = sb.received().len();
    Ok(summary)
}

/// Stops deliveries and closes the audit log (final checkpoint), as `serve` does on exit.
async fn stop_exchange(gw: &Gateway) {
    let rt = gw.runtime();
    if let Some(x) = &rt.exchange {
        x.stop().await;
    }
    if let Some(a) = &rt.audit {
        let _ = a.writer.shutdown().await;
    }
}

/// The trace: one line per step with the time since the demo started.
struct Trace<'a, W: Write> {
    out: &'a mut W,
    start: Instant,
    start_unix_ms: i64,
}

impl<'a, W: Write> Trace<'a, W> {
    fn new(out: &'a mut W) -> Self {
        Trace {
            out,
            start: Instant::now(),
            start_unix_ms: unix_ms(),
        }
    }

    fn raw(&mut self, s: impl Display) {
        let _ = writeln!(self.out, "{s}");
        let _ = self.out.flush();
    }

    fn heading(&mut self, s: impl Display) {
        self.raw(format_args!("\n{s}"));
    }

    fn step(&mut self, s: impl Display) {
        let t = self.start.elapsed().as_secs_f64();
        self.raw(format_args!("  +{t:.3}s  {s}"));
    }

    /// A Unix time in milliseconds as time since the start.
    fn at(&self, unix_ms: i64) -> String {
        format!(
            "+{:.3}s",
            (unix_ms - self.start_unix_ms).max(0) as f64 / 1000.0
        )
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `yyyyMMddHHmmss` in Vietnam time, `offset_days` from now.
fn national(offset_days: i64) -> String {
    VnDateTime::from_unix_millis(unix_ms() + offset_days * 86_400_000).format_national()
}

/// A client of the gateway's public and admin listeners.
struct Api {
    client: Client<HttpConnector, Body>,
    public: SocketAddr,
    admin: SocketAddr,
    token: String,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        to: SocketAddr,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), String> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://{to}{path}"));
        if to == self.public {
            b = b.header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        }
        let body = match body {
            Some(v) => {
                b = b.header(header::CONTENT_TYPE, "application/json");
                Body::full(serde_json::to_vec(v).map_err(|e| e.to_string())?)
            }
            None => Body::empty(),
        };
        let req = b.body(body).map_err(|e| format!("{path}: {e}"))?;
        let rsp = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .map_err(|_| format!("{path}: no answer within 10s"))?
            .map_err(|e| format!("{path}: {}", crate::upstream::error_chain(&e)))?;
        let status = rsp.status().as_u16();
        let bytes = crate::body::collect_capped(Body::stream(rsp.into_body(), None), 4 << 20)
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, v))
    }

    async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), String> {
        self.call(Method::POST, self.public, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Result<(u16, Value), String> {
        self.call(Method::GET, self.public, path, None).await
    }

    async fn outbox(&self) -> Result<Vec<OutboxRow>, String> {
        let (status, v) = self
            .call(Method::GET, self.admin, "/admin/exchange/outbox", None)
            .await?;
        if status != 200 {
            return Err(format!("GET /admin/exchange/outbox → {status}: {v}"));
        }
        Ok(v.as_array()
            .map(|a| a.iter().map(OutboxRow::from_json).collect())
            .unwrap_or_default())
    }
}

/// One row of `GET /admin/exchange/outbox`.
#[derive(Debug, Clone)]
struct OutboxRow {
    id: i64,
    destination: String,
    code: String,
    seq: i64,
    state: String,
    attempts: u64,
    last_error: Option<String>,
}

impl OutboxRow {
    fn from_json(v: &Value) -> OutboxRow {
        OutboxRow {
            id: v["id"].as_i64().unwrap_or_default(),
            destination: v["destination"].as_str().unwrap_or_default().to_string(),
            code: v["dossier_code"].as_str().unwrap_or_default().to_string(),
            seq: v["event_seq"].as_i64().unwrap_or_default(),
            state: v["state"].as_str().unwrap_or_default().to_string(),
            attempts: v["attempts"].as_u64().unwrap_or_default(),
            last_error: v["last_error"].as_str().map(str::to_string),
        }
    }
}

/// The running script's state.
struct Demo<'a, W: Write> {
    api: Api,
    sb: Arc<Sandbox>,
    gw: Arc<Gateway>,
    tr: Trace<'a, W>,
    /// (dossier code, event seq) → what it is ("dossier", "step", …).
    labels: BTreeMap<(String, i64), String>,
    /// Outbox id → the (state, attempts) last printed.
    printed: BTreeMap<i64, (String, u64)>,
    /// Dossier code → applicant and summary, for the final timeline.
    who: BTreeMap<String, String>,
    /// Error codes already explained in the trace.
    explained: std::collections::BTreeSet<&'static str>,
    summary: Summary,
}

impl<W: Write> Demo<'_, W> {
    async fn script(&mut self) -> Result<(), String> {
        let dossiers = sample_dossiers();

        self.tr
            .heading("1. Three dossiers (hồ sơ) filed through the intake channel");
        let mut codes = Vec::new();
        for d in &dossiers[..3] {
            codes.push(self.file(d).await?);
        }

        let first = codes[0].clone();
        self.tr.heading(format!(
            "2. Progress on {first}: a processing step, a status change, the citizen's evaluation"
        ));
        let step = json!({
            "kind": "step",
            "handler": "Nguyễn Thị Hoa",
            "handler_title": "Chuyên viên",
            "department": "Phòng Giáo dục và Đào tạo",
            "at": national(0),
            "content": "Chuyển hồ sơ đến phòng chuyên môn",
            "status": 4
        });
        self.event(&first, "events", &step).await?;
        let status = json!({
            "kind": "status",
            "status": 9,
            "at": national(0),
            "comment": "Đã có kết quả tuyển sinh"
        });
        self.event(&first, "events", &status).await?;
        let evaluation = json!({"at": national(0), "rating": 5, "comment": "Nhanh, đúng hẹn"});
        self.event(&first, "evaluation", &evaluation).await?;
        self.tr
            .step("waiting until DVCQG (the sandbox) has everything …");
        let rows = self.watch(all_settled).await?;
        match rows {
            Some(rows) => {
                let n = rows.len();
                self.tr.step(format!(
                    "all {n} outbox items delivered; the sandbox DVCQG holds {} messages",
                    self.sb.received().len()
                ));
            }
            None => self.problem(format!(
                "deliveries before the outage did not settle within {}s",
                SETTLE.as_secs()
            )),
        }

        self.tr
            .heading("3. DVCQG goes down: two more dossiers are accepted but cannot be delivered");
        self.sb.set_mode(DESTINATION, Mode::Down);
        self.tr.step(format!(
            "sandbox: {DESTINATION} → down (connections dropped without an answer)"
        ));
        let outage_started = unix_ms();
        let mut late = Vec::new();
        for d in &dossiers[3..] {
            late.push(self.file(d).await?);
        }
        self.summary.filed_during_outage = late.clone();
        let l2 = late.clone();
        // Wait until each has failed at least twice, so the retries show.
        let failing = self
            .watch(move |rows| {
                l2.iter().all(|c| {
                    rows.iter()
                        .any(|r| &r.code == c && r.state == "retrying" && r.attempts >= 2)
                })
            })
            .await?;
        if failing.is_none() {
            self.problem("the deliveries of the dossiers filed during the outage did not fail and retry as expected".to_string());
        }
        let (_, v) = self.api.get(&format!("/v1/dossiers/{}", late[0])).await?;
        if let Some(d) = v["deliveries"].as_array().and_then(|a| a.first()) {
            self.tr.step(format!(
                "GET /v1/dossiers/{} → delivery to {}: {} after {} attempts; the dossier is stored and waits in the outbox",
                late[0],
                d["destination"].as_str().unwrap_or_default(),
                d["state"].as_str().unwrap_or_default(),
                d["attempts"]
            ));
        }

        self.tr
            .heading("4. DVCQG comes back: the outbox delivers what waited");
        self.sb.set_mode(DESTINATION, Mode::Ok);
        let outage_ended = unix_ms();
        self.tr.step(format!("sandbox: {DESTINATION} → ok"));
        match self.watch(all_settled).await? {
            Some(rows) => self.tr.step(format!(
                "all {} outbox items delivered; the sandbox DVCQG holds {} messages",
                rows.len(),
                self.sb.received().len()
            )),
            None => self.problem(format!(
                "deliveries after the outage did not settle within {}s",
                SETTLE.as_secs()
            )),
        }

        self.tr.heading(
            "5. Where each dossier went and when (GET /v1/dossiers/{code}, attempt log, sandbox)",
        );
        let mut all = codes.clone();
        all.extend(late.iter().cloned());
        for code in &all {
            self.timeline(code, outage_started, outage_ended).await?;
        }
        self.check(&all).await?;
        self.conclude();
        Ok(())
    }

    fn problem(&mut self, p: String) {
        self.tr.step(format!("PROBLEM: {p}"));
        self.summary.problems.push(p);
    }

    /// `POST /v1/dossiers`; any answer but 202 ends the demo.
    async fn file(&mut self, d: &Value) -> Result<String, String> {
        let (status, v) = self.api.post("/v1/dossiers", d).await?;
        if status != 202 {
            self.tr.step(format!("POST /v1/dossiers → {status} {v}"));
            return Err(format!("the intake refused a dossier: {status} {v}"));
        }
        let code = v["dossier_code"].as_str().unwrap_or_default().to_string();
        let dest: Vec<&str> = v["destinations"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let status_code = d["status"]
            .as_u64()
            .and_then(|s| u8::try_from(s).ok())
            .and_then(TrangThaiHoSo::from_code);
        let who = format!(
            "{}: {}",
            d["applicant"]["name"].as_str().unwrap_or_default(),
            d["summary"].as_str().unwrap_or_default()
        );
        self.tr.step(format!(
            "POST /v1/dossiers → 202 {code} (destinations: {}) — {who}, TrangThaiHoSo {}",
            dest.join(", "),
            status_code.map(|s| s.to_string()).unwrap_or_default()
        ));
        self.labels.insert((code.clone(), 0), "dossier".into());
        self.who.insert(code.clone(), who);
        self.summary.accepted.push(code.clone());
        Ok(code)
    }

    /// `POST /v1/dossiers/{code}/events` or `/evaluation`; any answer but 202 ends the demo.
    async fn event(&mut self, code: &str, path: &str, body: &Value) -> Result<(), String> {
        let url = format!("/v1/dossiers/{code}/{path}");
        let (status, v) = self.api.post(&url, body).await?;
        let kind = body["kind"].as_str().unwrap_or("evaluation").to_string();
        let what = match kind.as_str() {
            "step" => format!(
                "step \"{}\" → TrangThaiHoSo {}",
                body["content"].as_str().unwrap_or_default(),
                status_name(&body["status"])
            ),
            "status" => format!("status → TrangThaiHoSo {}", status_name(&body["status"])),
            _ => format!("evaluation: {} of 5", body["rating"]),
        };
        if status != 202 {
            self.tr.step(format!("POST {url} → {status} {v}"));
            return Err(format!("the intake refused an event: {status} {v}"));
        }
        let seq = v["seq"].as_i64().unwrap_or_default();
        self.tr
            .step(format!("POST {url} → 202 event #{seq}: {what}"));
        self.labels.insert((code.to_string(), seq), kind);
        Ok(())
    }

    /// Polls the admin outbox until `done` holds (Some(rows)) or [`SETTLE`] passes (None),
    /// printing every delivery, failed attempt and dead letter as it is seen.
    async fn watch(
        &mut self,
        done: impl Fn(&[OutboxRow]) -> bool,
    ) -> Result<Option<Vec<OutboxRow>>, String> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let rows = self.api.outbox().await?;
            for r in &rows {
                self.report(r);
            }
            if done(&rows) {
                return Ok(Some(rows));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// One trace line for an outbox row whose state changed since it was last printed.
    fn report(&mut self, r: &OutboxRow) {
        if !matches!(r.state.as_str(), "delivered" | "retrying" | "dead") {
            return;
        }
        let now = (r.state.clone(), r.attempts);
        if self.printed.get(&r.id) == Some(&now) {
            return;
        }
        self.printed.insert(r.id, now);
        let what = self.label(&r.code, r.seq);
        let head = format!("outbox #{} {} {what} → {}", r.id, r.code, r.destination);
        let err = r.last_error.as_deref().unwrap_or("?");
        let line = match r.state.as_str() {
            "delivered" => format!(
                "{head}: delivered (attempt {}) — {}",
                r.attempts,
                self.received_as(&r.code, r.seq)
            ),
            "retrying" => format!("{head}: attempt {} failed, will retry — {err}", r.attempts),
            _ => format!("{head}: DEAD after {} attempts — {err}", r.attempts),
        };
        self.tr.step(line);
        if r.state == "retrying" {
            self.explain(err);
        }
    }

    /// Says once why attempts fail fast although the counterpart may be back.
    fn explain(&mut self, err: &str) {
        let rt = self.gw.runtime();
        let Some(up) = rt.config.upstreams.get(SANDBOX_UPSTREAM) else {
            return;
        };
        let (code, why) = if err.starts_with("no_healthy_endpoint") {
            (
                "no_healthy_endpoint",
                format!(
                    "the gateway took the sandbox endpoint out of rotation after {} consecutive failures \
                     (passive health) for {}: attempts fail fast meanwhile, and the outbox keeps retrying",
                    up.passive.consecutive_failures,
                    crate::config::format_duration(up.passive.ejection_time)
                ),
            )
        } else if err.starts_with("circuit_open") {
            (
                "circuit_open",
                format!(
                    "the sandbox upstream's circuit breaker opened after {} consecutive failures, for {}",
                    up.circuit_breaker.consecutive_failures,
                    crate::config::format_duration(up.circuit_breaker.open_for)
                ),
            )
        } else {
            return;
        };
        if self.explained.insert(code) {
            self.tr.raw(format!("           ({why})"));
        }
    }

    fn label(&self, code: &str, seq: i64) -> String {
        self.labels
            .get(&(code.to_string(), seq))
            .cloned()
            .unwrap_or_else(|| format!("event #{seq}"))
    }

    /// What the sandbox DVCQG got for this item, in the national shape.
    fn received_as(&self, code: &str, seq: i64) -> String {
        let key = format!("{code}:{seq}");
        let got: Vec<Value> = self
            .sb
            .received()
            .into_iter()
            .filter(|r| r["idempotency_key"].as_str() == Some(key.as_str()))
            .collect();
        match got.first() {
            None => {
                let takes = self
                    .gw
                    .runtime()
                    .config
                    .exchange
                    .as_ref()
                    .and_then(|x| x.delivery_adapters.get(DESTINATION))
                    .and_then(|a| a.events.clone());
                match takes {
                    Some(k) if seq > 0 => format!(
                        "nothing sent: {DESTINATION} takes only {} events",
                        k.join(", ")
                    ),
                    _ => "nothing in the sandbox".to_string(),
                }
            }
            Some(v) => {
                let b = &v["body"];
                let service = b["service"].as_str().unwrap_or("(canonical JSON)");
                let status = b["data"][0]["TrangThaiHoSo"]
                    .as_str()
                    .or(b["data"][0]["TrangThai"].as_str())
                    .unwrap_or("?");
                let again = if got.len() > 1 {
                    format!(" ({} copies: at-least-once)", got.len())
                } else {
                    String::new()
                };
                format!("DVCQG got {service} (TrangThai {status}, Idempotency-Key {key}){again}")
            }
        }
    }

    /// Prints one dossier's timeline: events, then per delivery its attempts with times.
    async fn timeline(&mut self, code: &str, down_from: i64, down_to: i64) -> Result<(), String> {
        let (status, t) = self.api.get(&format!("/v1/dossiers/{code}")).await?;
        if status != 200 {
            self.problem(format!("GET /v1/dossiers/{code} → {status} {t}"));
            return Ok(());
        }
        let who = self.who.get(code).cloned().unwrap_or_default();
        self.tr.raw(format!(
            "\n  {code}  {who}\n    now TrangThaiHoSo {}; accepted {}",
            status_name(&t["status"]),
            t["received_at"].as_str().unwrap_or_default()
        ));
        let mut received: BTreeMap<i64, String> = BTreeMap::new();
        received.insert(0, t["received_at"].as_str().unwrap_or_default().to_string());
        for e in t["events"].as_array().into_iter().flatten() {
            received.insert(
                e["seq"].as_i64().unwrap_or_default(),
                e["received_at"].as_str().unwrap_or_default().to_string(),
            );
        }
        let store = self.gw.runtime().exchange.as_ref().map(|x| x.store.clone());
        for d in t["deliveries"].as_array().into_iter().flatten() {
            let seq = d["event_seq"].as_i64().unwrap_or_default();
            let id = d["outbox_id"].as_i64().unwrap_or_default();
            let at = received.get(&seq).map(|s| clock(s)).unwrap_or_default();
            let n = d["attempts"].as_u64().unwrap_or_default();
            self.tr.raw(format!(
                "    #{seq} {:<10} received {at} → {}: {} after {n} attempt{}",
                self.label(code, seq),
                d["destination"].as_str().unwrap_or_default(),
                d["state"].as_str().unwrap_or_default(),
                if n == 1 { "" } else { "s" }
            ));
            let attempts = match &store {
                Some(s) => s.attempts(id).await.map_err(|e| e.to_string())?,
                None => Vec::new(),
            };
            for a in attempts {
                let outcome = a.outcome.as_deref().unwrap_or("unfinished");
                let detail = match outcome {
                    "delivered" => self.received_as(code, seq),
                    _ => a.detail.clone().unwrap_or_default(),
                };
                let during =
                    if outcome == "retry" && a.started_at >= down_from && a.started_at <= down_to {
                        self.summary.failed_attempts_during_outage += 1;
                        " [outage]"
                    } else {
                        ""
                    };
                self.tr.raw(format!(
                    "        attempt {} at {}: {outcome}{during} — {detail}",
                    a.attempt,
                    self.tr.at(a.started_at)
                ));
            }
        }
        Ok(())
    }

    /// What must hold at the end: every item delivered, every sent kind in the sandbox,
    /// and the outage visible as failed attempts.
    async fn check(&mut self, codes: &[String]) -> Result<(), String> {
        let rows = self.api.outbox().await?;
        self.summary.outbox_items = rows.len();
        self.summary.delivered = rows.iter().filter(|r| r.state == "delivered").count();
        for r in rows.iter().filter(|r| r.state != "delivered") {
            self.summary.problems.push(format!(
                "outbox #{} ({} {} → {}) is {} after {} attempts: {}",
                r.id,
                r.code,
                self.label(&r.code, r.seq),
                r.destination,
                r.state,
                r.attempts,
                r.last_error.as_deref().unwrap_or("-")
            ));
        }
        let received = self.sb.received();
        let has = |key: String| {
            received
                .iter()
                .any(|r| r["idempotency_key"].as_str() == Some(key.as_str()))
        };
        for c in codes {
            if !has(format!("{c}:0")) {
                self.summary
                    .problems
                    .push(format!("the sandbox DVCQG never received dossier {c}"));
            }
        }
        for ((c, seq), kind) in &self.labels {
            if matches!(kind.as_str(), "step" | "status") && !has(format!("{c}:{seq}")) {
                self.summary.problems.push(format!(
                    "the sandbox DVCQG never received the {kind} event #{seq} of {c}"
                ));
            }
        }
        if self.summary.failed_attempts_during_outage == 0 {
            self.summary
                .problems
                .push("no delivery attempt failed during the outage".into());
        }
        Ok(())
    }

    fn conclude(&mut self) {
        let s = &self.summary;
        let verdict = if s.ok() { "OK" } else { "FAILED" };
        let line = format!(
            "\nResult: {verdict} — {} dossiers accepted ({} during the outage), {}/{} outbox items delivered, \
             the sandbox DVCQG received {} messages; {} attempts failed during the outage and were retried.",
            s.accepted.len(),
            s.filed_during_outage.len(),
            s.delivered,
            s.outbox_items,
            self.sb.received().len(),
            s.failed_attempts_during_outage
        );
        self.tr.raw(line);
        for p in self.summary.problems.clone() {
            self.tr.raw(format!("  - {p}"));
        }
    }
}

/// Every outbox item delivered, dead or cancelled (nothing left to try).
fn all_settled(rows: &[OutboxRow]) -> bool {
    !rows.is_empty()
        && rows
            .iter()
            .all(|r| matches!(r.state.as_str(), "delivered" | "dead" | "cancelled"))
}

fn status_name(v: &Value) -> String {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .and_then(|n| u8::try_from(n).ok())
        .and_then(TrangThaiHoSo::from_code)
        .map(|s| s.to_string())
        .unwrap_or_else(|| v.to_string())
}

/// `HH:MM:SS` of an RFC 3339 time.
fn clock(rfc3339: &str) -> String {
    rfc3339.get(11..19).unwrap_or(rfc3339).to_string()
}

/// Five dossiers: the DVCQG adapter's fixture (without its code, so the gateway assigns one)
/// and four variations with other applicants, summaries and statuses, dated today.
fn sample_dossiers() -> Vec<Value> {
    let mut base: Value = serde_json::from_str(FIXTURE_DOSSIER).unwrap_or_default();
    if let Some(o) = base.as_object_mut() {
        o.remove("code");
    }
    let vary = |name: &str, cccd: &str, phone: &str, summary: &str, status: u8| {
        let mut d = base.clone();
        d["summary"] = summary.into();
        d["status"] = status.into();
        d["submitted_at"] = national(0).into();
        d["due_at"] = national(7).into();
        d["applicant"]["name"] = name.into();
        d["applicant"]["id_number"] = cccd.into();
        d["applicant"]["identifiers"] = json!([{"kind": "1", "number": cccd}]);
        d["applicant"]["phone"] = phone.into();
        if let Some(a) = d["applicant"].as_object_mut() {
            a.remove("email");
        }
        if let Some(o) = d.as_object_mut() {
            if status == 1 {
                // Submitted online, not yet accepted at the desk: no intake time, no steps.
                o.remove("received_at");
                o.remove("steps");
            } else {
                o.insert("received_at".into(), national(0).into());
                o.insert(
                    "steps".into(),
                    json!([{"handler": "Cán bộ một cửa", "at": national(0), "content": "Tiếp nhận hồ sơ", "status": 2}]),
                );
            }
        }
        d
    };
    vec![
        base.clone(),
        vary(
            "Trần Thị Bích",
            "022185000123",
            "0912000001",
            "Hồ sơ tuyển sinh lớp 6 (nộp trực tuyến)",
            1,
        ),
        vary(
            "Lê Văn Cường",
            "022088000456",
            "0912000002",
            "Hồ sơ tuyển sinh lớp 6, diện ưu tiên",
            2,
        ),
        vary(
            "Phạm Thị Dung",
            "022192000789",
            "0912000003",
            "Hồ sơ tuyển sinh lớp 6, chuyển trường",
            2,
        ),
        vary(
            "Hoàng Văn Em",
            "022087001234",
            "0912000004",
            "Hồ sơ tuyển sinh lớp 6 (nộp trực tuyến)",
            1,
        ),
    ]
}
