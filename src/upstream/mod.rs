//! Upstream pools: endpoints from config only, balancing, active and passive health,
//! a circuit breaker, a retry budget, keep-alive connection reuse and upstream TLS.
//!
//! A pool survives config reloads when its config is unchanged, so health state and
//! pooled connections are kept; a changed pool is rebuilt and its old health task ends
//! when the last reference to the old pool goes away (it only holds a `Weak`).

pub mod conn_pool;
pub mod raw;
pub mod tls_util;

use crate::body::{is_too_large, Body, BodyGuard};
use crate::clock::mono_ms;
use crate::config::{Balance, EndpointAddr, UpstreamConfig};
use crate::error::{ErrorKind, GatewayError};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

type Connector = tls_util::Timed<hyper_rustls::HttpsConnector<HttpConnector>>;

pub struct Endpoint {
    pub addr: EndpointAddr,
    /// `addr` as text (`scheme://host:port`), made once: every proxied request names
    /// its endpoint in the access log and the audit record.
    pub label: Arc<str>,
    /// The lean HTTP/1.1 connection pool of this endpoint (None for HTTP/2 pools,
    /// which use the multiplexing client).
    conn: Option<conn_pool::ConnPool>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    outstanding: AtomicUsize,
    consecutive_failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    /// Result of active health checks (true until a check says otherwise).
    healthy: AtomicBool,
    health_streak: AtomicU32,
}

impl Endpoint {
    fn available(&self, now: u64) -> bool {
        self.healthy.load(Ordering::Relaxed) && self.ejected_until_ms.load(Ordering::Relaxed) <= now
    }

    pub fn is_healthy(&self) -> bool {
        self.available(mono_ms())
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Idle keep-alive connections held for this endpoint (HTTP/1 pools; an HTTP/2
    /// pool's connections are hyper-util's and not counted here).
    pub fn idle_connections(&self) -> Option<usize> {
        self.conn.as_ref().map(|c| c.idle_count())
    }
}

/// Counts one outstanding request on an endpoint until dropped (at the end of the
/// response body, or earlier on failure).
pub struct Outstanding(Arc<Endpoint>);

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

impl BodyGuard for Outstanding {}

/// Closed → open after N consecutive failures → half-open (one probe) after `open_for`.
struct Breaker {
    threshold: u32,
    open_for_ms: u64,
    failures: AtomicU32,
    open_until_ms: AtomicU64,
    probing: AtomicBool,
}

impl Breaker {
    /// Ok(()) when a request may go; Err(seconds until retry) when open.
    fn admit(&self, now: u64) -> Result<bool, u64> {
        if self.threshold == 0 {
            return Ok(false);
        }
        let until = self.open_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return Ok(false);
        }
        if now < until {
            return Err((until - now).div_ceil(1000).max(1));
        }
        // Half-open: exactly one probe at a time.
        if self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            Ok(true)
        } else {
            Err(1)
        }
    }

    fn record(&self, ok: bool, probe: bool, now: u64) {
        if self.threshold == 0 {
            return;
        }
        if ok {
            if self.failures.load(Ordering::Relaxed) != 0 {
                self.failures.store(0, Ordering::Relaxed);
            }
            if probe || self.open_until_ms.load(Ordering::Relaxed) != 0 {
                self.open_until_ms.store(0, Ordering::Relaxed);
            }
        } else {
            let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
            if probe || n >= self.threshold {
                self.open_until_ms
                    .store(now + self.open_for_ms, Ordering::Relaxed);
            }
        }
        if probe {
            self.probing.store(false, Ordering::Release);
        }
    }

    pub fn is_open(&self) -> bool {
        let until = self.open_until_ms.load(Ordering::Relaxed);
        until != 0 && mono_ms() < until
    }
}

/// The half-open breaker's one probe, held by the exchange that is it. However that
/// exchange ends — recorded by [`ProbeTicket::record`], refused before it was sent,
/// timed out or dropped with its client — the probe slot is given back, so the breaker
/// can never stay half-open with nobody probing (which would refuse every request
/// until a restart).
struct ProbeTicket<'a>(Option<&'a Breaker>);

impl ProbeTicket<'_> {
    /// Records the exchange's outcome in the breaker (as the probe's, if it is one).
    fn record(&mut self, ok: bool, breaker: &Breaker) {
        let probe = self.0.take().is_some();
        breaker.record(ok, probe, mono_ms());
    }
}

impl Drop for ProbeTicket<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.0 {
            b.probing.store(false, Ordering::Release);
        }
    }
}

/// Retries may add at most `percent` of the requests seen in the current 10 s window,
/// plus `min_per_second`, so that a failing upstream is not hit by a retry storm.
struct RetryBudget {
    percent: u64,
    floor: u64,
    window_start_ms: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

const BUDGET_WINDOW_MS: u64 = 10_000;

impl RetryBudget {
    fn roll(&self, now: u64) {
        let start = self.window_start_ms.load(Ordering::Relaxed);
        if now.saturating_sub(start) >= BUDGET_WINDOW_MS
            && self
                .window_start_ms
                .compare_exchange(start, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.requests.store(0, Ordering::Relaxed);
            self.retries.store(0, Ordering::Relaxed);
        }
    }

    fn on_request(&self, now: u64) {
        self.roll(now);
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn try_retry(&self) -> bool {
        let allowed = self.requests.load(Ordering::Relaxed) * self.percent / 100
            + self.floor * BUDGET_WINDOW_MS / 1000;
        // One compare-and-swap: a window reset (`roll` storing 0) between an add and a
        // give-back would wrap the count and refuse every retry until the next window.
        self.retries
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used < allowed).then_some(used + 1)
            })
            .is_ok()
    }
}

/// Held by a streamed request body until it has been read to its end (`Pool::send`).
struct UploadPending(Arc<Upload>);

/// A streamed request body as the upload's guard sees it.
#[derive(Default)]
struct Upload {
    /// The body's last poll found it waiting on the client (not on the upstream, which
    /// stops reading it when it does not take more).
    waiting_on_client: std::sync::atomic::AtomicBool,
    /// The client's side of the body failed (it went away mid-upload).
    client_failed: AtomicBool,
}

impl BodyGuard for UploadPending {
    fn polled(&self, waiting: bool) {
        self.0.waiting_on_client.store(waiting, Ordering::Relaxed);
    }
    fn failed(&self) {
        self.0.client_failed.store(true, Ordering::Relaxed);
    }
}

/// Whether the client's body broke off: whatever the attempt's error, it is the
/// client's doing, not the endpoint's.
fn client_broke_off(upload: Option<&Arc<Upload>>) -> bool {
    upload.is_some_and(|u| u.client_failed.load(Ordering::Relaxed))
}

fn client_body_error() -> GatewayError {
    GatewayError::bad_request("bad_body", "the request body could not be read")
}

/// Whether a deadline passing now is the client's: its body, not all read yet, is
/// waiting on it.
fn client_is_late(upload: Option<&Arc<Upload>>) -> bool {
    upload.is_some_and(|u| Arc::strong_count(u) > 1 && u.waiting_on_client.load(Ordering::Relaxed))
}

fn request_body_timeout() -> GatewayError {
    GatewayError::new(
        ErrorKind::RequestTimeout,
        "request_body_timeout",
        "the request body did not arrive in time",
    )
}

pub struct Pool {
    pub cfg: UpstreamConfig,
    pub endpoints: Vec<Arc<Endpoint>>,
    rr: AtomicUsize,
    client: Client<Connector, Body>,
    breaker: Breaker,
    budget: RetryBudget,
    health_known: AtomicBool,
    credentials: OnceLock<Arc<crate::auth::credentials::Credentials>>,
}

/// What the pipeline hands to [`Pool::send`]: everything but the endpoint.
pub struct OutboundRequest {
    pub method: http::Method,
    /// Path and query, already normalised and rewritten.
    pub path_and_query: http::uri::PathAndQuery,
    pub headers: http::HeaderMap,
    pub body: Body,
    /// Whether the method (or the route) allows re-sending after a sent attempt failed.
    pub idempotent: bool,
    pub timeout: Duration,
    /// Set `Host` to the endpoint's authority (route `host_header = "upstream"`).
    pub host_from_endpoint: bool,
}

/// The upstream's answer plus which endpoint gave it.
pub struct Answer {
    pub response: http::Response<Body>,
    pub endpoint: Arc<Endpoint>,
    pub attempts: u32,
}

impl Pool {
    pub fn new(cfg: UpstreamConfig) -> Result<Arc<Pool>, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        // hyper-util times only the TCP connect: the whole of it (name lookup, TCP and
        // the TLS handshake) is bounded here, as the HTTP/1 pool bounds it.
        let connector = tls_util::Timed::new(tls_util::connector(&cfg, http)?, cfg.connect_timeout);
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(cfg.idle_timeout)
            .pool_max_idle_per_host(cfg.max_idle_per_endpoint)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .set_host(false)
            .http2_only(cfg.http2);
        let client = b.build(connector);
        let h1_tls = if !cfg.http2 && cfg.endpoints.iter().any(|e| e.https) {
            let mut c = tls_util::client_config(&cfg)?;
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(Arc::new(c))
        } else {
            None
        };
        let endpoints = cfg
            .endpoints
            .iter()
            .map(|e| {
                let conn = if cfg.http2 {
                    None
                } else {
                    let tls = match (&h1_tls, e.https) {
                        (Some(c), true) => Some((c.clone(), tls_util::server_name(&cfg, &e.host)?)),
                        _ => None,
                    };
                    let target: conn_pool::Target =
                        match e.authority.parse::<std::net::SocketAddr>() {
                            Ok(a) => a.into(),
                            Err(_) => conn_pool::Target::HostPort(e.authority.clone()),
                        };
                    Some(conn_pool::ConnPool::new(
                        target,
                        conn_pool::PoolSettings {
                            connect_timeout: cfg.connect_timeout,
                            idle_timeout: cfg.idle_timeout,
                            max_idle: cfg.max_idle_per_endpoint,
                            tls,
                            nodelay: true,
                        },
                    ))
                };
                Ok(Arc::new(Endpoint {
                    conn,
                    addr: e.clone(),
                    label: e.to_string().into(),
                    scheme: if e.https {
                        http::uri::Scheme::HTTPS
                    } else {
                        http::uri::Scheme::HTTP
                    },
                    authority: e
                        .authority
                        .parse()
                        .map_err(|_| format!("invalid endpoint authority {}", e.authority))?,
                    outstanding: AtomicUsize::new(0),
                    consecutive_failures: AtomicU32::new(0),
                    ejected_until_ms: AtomicU64::new(0),
                    healthy: AtomicBool::new(true),
                    health_streak: AtomicU32::new(0),
                }))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let pool = Arc::new(Pool {
            breaker: Breaker {
                threshold: cfg.circuit_breaker.consecutive_failures,
                open_for_ms: cfg.circuit_breaker.open_for.as_millis() as u64,
                failures: AtomicU32::new(0),
                open_until_ms: AtomicU64::new(0),
                probing: AtomicBool::new(false),
            },
            budget: RetryBudget {
                percent: cfg.retry.budget_percent as u64,
                floor: cfg.retry.min_per_second as u64,
                window_start_ms: AtomicU64::new(mono_ms()),
                requests: AtomicU64::new(0),
                retries: AtomicU64::new(0),
            },
            health_known: AtomicBool::new(cfg.health.is_none()),
            credentials: OnceLock::new(),
            rr: AtomicUsize::new(0),
            endpoints,
            client,
            cfg,
        });
        Ok(pool)
    }

    /// Starts the active health checker (needs a Tokio runtime). It stops by itself
    /// once the pool is dropped.
    pub fn start_health_checks(self: &Arc<Self>) {
        if self.cfg.health.is_some() {
            let weak = Arc::downgrade(self);
            tokio::spawn(health_loop(weak));
        }
    }

    pub fn credentials(&self) -> Option<&Arc<crate::auth::credentials::Credentials>> {
        self.credentials.get()
    }

    pub fn set_credentials(&self, c: crate::auth::credentials::Credentials) {
        let _ = self.credentials.set(Arc::new(c));
    }

    /// Ready = every endpoint has had at least one health verdict (or no checks are configured).
    pub fn health_known(&self) -> bool {
        self.health_known.load(Ordering::Acquire)
    }

    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    fn pick(&self, exclude: Option<&Arc<Endpoint>>) -> Option<Arc<Endpoint>> {
        let now = mono_ms();
        let n = self.endpoints.len();
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        // The pool's balancing among the endpoints that pass `keep`.
        let choose = |keep: &dyn Fn(&Arc<Endpoint>) -> bool| {
            let mut order = (0..n).map(|i| &self.endpoints[(start + i) % n]);
            match self.cfg.balance {
                Balance::RoundRobin => order.find(|e| keep(e)).cloned(),
                Balance::LeastOutstanding => order
                    .filter(|e| keep(e))
                    .min_by_key(|e| e.outstanding())
                    .cloned(),
            }
        };
        choose(&|e| e.available(now) && exclude.is_none_or(|x| !Arc::ptr_eq(x, e)))
            .or_else(|| {
                // With one endpoint left, a retry may go back to the one that just failed
                // only if it is still available; otherwise there is nothing to try.
                exclude.filter(|e| e.available(now)).cloned()
            })
            .or_else(|| {
                // Every healthy endpoint ejected (a one-endpoint pool after a run of
                // failures, say): a first attempt goes to them anyway, balanced as usual,
                // rather than refusing all traffic for the ejection time. Ejection steers
                // load between endpoints; refusing a failing upstream as a whole is the
                // circuit breaker's job, which probes it and closes again when it answers.
                if exclude.is_some() {
                    return None;
                }
                choose(&|e| e.healthy.load(Ordering::Relaxed))
            })
    }

    fn pick_or_refuse(
        &self,
        exclude: Option<&Arc<Endpoint>>,
    ) -> Result<Arc<Endpoint>, GatewayError> {
        self.pick(exclude).ok_or_else(|| {
            GatewayError::unavailable(
                "no_healthy_endpoint",
                "no healthy upstream endpoint is available",
                1,
            )
        })
    }

    fn record(&self, ep: &Endpoint, ok: bool) {
        if ok {
            if ep.consecutive_failures.load(Ordering::Relaxed) != 0 {
                ep.consecutive_failures.store(0, Ordering::Relaxed);
            }
            // An ejected endpoint gets requests only when every one was ejected (`pick`'s
            // fallback), or answers one sent before: either way it answers, which ends
            // the ejection, and it is counted healthy again.
            if ep.ejected_until_ms.load(Ordering::Relaxed) != 0 {
                ep.ejected_until_ms.store(0, Ordering::Relaxed);
            }
            return;
        }
        let n = ep.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let threshold = self.cfg.passive.consecutive_failures;
        if threshold > 0 && n >= threshold {
            let until = mono_ms() + self.cfg.passive.ejection_time.as_millis() as u64;
            ep.ejected_until_ms.store(until, Ordering::Relaxed);
            ep.consecutive_failures.store(0, Ordering::Relaxed);
            metrics::counter!("lienthong_upstream_ejections_total", "upstream" => self.cfg.name.clone())
                .increment(1);
            tracing::warn!(upstream = %self.cfg.name, endpoint = %ep.addr, "endpoint ejected after {n} consecutive failures");
        }
    }

    /// Sends a request, retrying on another endpoint where that is safe and the
    /// budget allows. The whole exchange (all attempts, up to the response head) is
    /// bounded by `req.timeout`.
    pub async fn send(&self, mut req: OutboundRequest) -> Result<Answer, GatewayError> {
        let deadline = tokio::time::Instant::now() + req.timeout;
        // The endpoint of the attempt in flight, if any, when the deadline passes: a
        // timeout is that endpoint's failure too (passive ejection counts it).
        let mut in_flight = None;
        // A streamed request body carries a marker it drops once it has all been read:
        // a deadline passing before that is the client's slowness, not the upstream's.
        let upload = matches!(req.body, Body::Stream { .. }).then(|| {
            let u = Arc::new(Upload::default());
            let body = std::mem::replace(&mut req.body, Body::Empty);
            req.body = body.with_guard(Box::new(UploadPending(u.clone())));
            u
        });
        let attempt = self.send_inner(req, &mut in_flight, upload.as_ref());
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(r) => r,
            // Nothing counts against the endpoint or the breaker: it was still waiting
            // for the body (a half-open probe's ticket has given its slot back).
            Err(_) if client_broke_off(upload.as_ref()) => Err(client_body_error()),
            Err(_) if client_is_late(upload.as_ref()) => Err(request_body_timeout()),
            Err(_) => Err(self.deadline_passed(in_flight)),
        }
    }

    /// The whole exchange's deadline passed with `in_flight` the endpoint of the
    /// attempt then running, if any: its failure, and the breaker's.
    fn deadline_passed(&self, in_flight: Option<Arc<Endpoint>>) -> GatewayError {
        if let Some(ep) = in_flight {
            self.record(&ep, false);
        }
        // A probe that timed out has given its slot back (`ProbeTicket`); the failure
        // reopens the breaker, whose failure count is still at its threshold.
        self.breaker.record(false, false, mono_ms());
        GatewayError::new(
            ErrorKind::GatewayTimeout,
            "upstream_timeout",
            "the upstream did not answer in time",
        )
    }

    /// The circuit breaker's admission of a new request: a probe ticket when it is
    /// half-open, the refusal when it is open.
    fn admit(&self, now: u64) -> Result<ProbeTicket<'_>, GatewayError> {
        self.budget.on_request(now);
        match self.breaker.admit(now) {
            Ok(p) => Ok(ProbeTicket(p.then_some(&self.breaker))),
            Err(secs) => Err(GatewayError::unavailable(
                "circuit_open",
                "the upstream is failing; try again later",
                secs,
            )),
        }
    }

    async fn send_inner(
        &self,
        req: OutboundRequest,
        in_flight: &mut Option<Arc<Endpoint>>,
        upload: Option<&Arc<Upload>>,
    ) -> Result<Answer, GatewayError> {
        let mut probe = self.admit(mono_ms())?;
        let OutboundRequest {
            method,
            path_and_query,
            mut headers,
            body,
            idempotent,
            host_from_endpoint,
            ..
        } = req;
        let replay = body.replayable();
        let max_attempts = self.cfg.retry.attempts.max(1);
        let creds = self.credentials.get();
        if let Some(c) = creds {
            // An error here returns with the probe ticket, which gives the slot back.
            Box::pin(c.apply(&mut headers)).await?;
        }
        // One re-authentication when the upstream refuses our credential (401), if
        // the body can be sent again.
        let mut reauth_left = creds.is_some() && replay.is_some();
        let mut body = Some(body);
        let mut last: Option<Arc<Endpoint>> = None;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let ep = self.pick_or_refuse(last.as_ref())?;
            let can_retry_more = attempt < max_attempts && replay.is_some();
            let keep_copy = can_retry_more || reauth_left;
            let this_body = if keep_copy {
                Body::full(replay.clone().unwrap_or_default())
            } else {
                match body.take() {
                    Some(b) => b,
                    None => Body::full(replay.clone().unwrap_or_default()),
                }
            };
            // An HTTP/1.1 connection is sent the origin form as it is; the HTTP/2
            // client needs the absolute form (scheme and authority make the
            // pseudo-headers).
            let uri = if ep.conn.is_some() {
                http::Uri::from(path_and_query.clone())
            } else {
                http::Uri::builder()
                    .scheme(ep.scheme.clone())
                    .authority(ep.authority.clone())
                    .path_and_query(path_and_query.clone())
                    .build()
                    .map_err(GatewayError::internal)?
            };
            if host_from_endpoint {
                if let Ok(v) = http::HeaderValue::from_str(ep.authority.as_str()) {
                    headers.insert(http::header::HOST, v);
                }
            }
            // Set field by field rather than through `Request::builder`, which moves
            // the whole head at every step.
            let mut up_req = http::Request::new(this_body);
            *up_req.method_mut() = method.clone();
            *up_req.uri_mut() = uri;
            *up_req.headers_mut() = if keep_copy {
                headers.clone()
            } else {
                std::mem::take(&mut headers)
            };
            ep.outstanding.fetch_add(1, Ordering::Relaxed);
            let guard = Outstanding(ep.clone());
            *in_flight = Some(ep.clone());
            let result = self.per_try(self.dispatch(&ep, up_req)).await;
            *in_flight = None;
            match result {
                Ok(rsp) => {
                    let status = rsp.status();
                    if status == http::StatusCode::UNAUTHORIZED && reauth_left {
                        if let Some(c) = creds {
                            reauth_left = false;
                            if c.invalidate(headers.get(http::header::AUTHORIZATION)) {
                                drop(guard);
                                Box::pin(c.apply(&mut headers)).await?;
                                attempt -= 1;
                                last = None;
                                continue;
                            }
                        }
                    }
                    let failed = matches!(status.as_u16(), 502..=504);
                    self.record(&ep, !failed);
                    if failed && self.may_retry(idempotent, can_retry_more) {
                        drop(guard);
                        last = Some(ep);
                        continue;
                    }
                    probe.record(!failed, &self.breaker);
                    let rsp =
                        rsp.map(|b: Incoming| Body::stream(b, None).with_guard(Box::new(guard)));
                    return Ok(Answer {
                        response: rsp,
                        endpoint: ep,
                        attempts: attempt,
                    });
                }
                Err(e) => {
                    drop(guard);
                    // A try that ran out of time waiting for the client's body: the
                    // client's delay (`Pool::send`), not the endpoint's failure.
                    if e.timed_out && client_is_late(upload) {
                        return Err(request_body_timeout());
                    }
                    // The client's body broke off: not the endpoint's failure, and
                    // nothing to retry with.
                    if client_broke_off(upload) {
                        return Err(client_body_error());
                    }
                    if is_too_large(e.error.as_ref()) {
                        return Err(GatewayError::new(
                            ErrorKind::PayloadTooLarge,
                            "body_too_large",
                            "the request body is larger than this route accepts",
                        ));
                    }
                    let connect = e.connect;
                    self.record(&ep, false);
                    // A connect failure means nothing was sent, so any method may be
                    // retried; after a sent attempt only idempotent ones.
                    if self.may_retry(connect || idempotent, can_retry_more) {
                        last = Some(ep);
                        continue;
                    }
                    probe.record(false, &self.breaker);
                    return Err(self.attempt_error(&ep, &e));
                }
            }
        }
    }

    /// Bounds one attempt by `retry.per_try_timeout`, when set: past it the attempt is
    /// its endpoint's failure, retried elsewhere where retries are allowed.
    async fn per_try<T>(
        &self,
        attempt: impl std::future::Future<Output = Result<T, DispatchError>>,
    ) -> Result<T, DispatchError> {
        match self.cfg.retry.per_try_timeout {
            None => attempt.await,
            Some(t) => tokio::time::timeout(t, attempt).await.unwrap_or_else(|_| {
                Err(DispatchError {
                    connect: false,
                    timed_out: true,
                    error: "the attempt exceeded retry.per_try_timeout".into(),
                })
            }),
        }
    }

    /// Whether a failed attempt is tried again: `allowed` (its method or route permits
    /// it), attempts left, an endpoint to go to and room in the retry budget. Counts
    /// the retry when it is.
    fn may_retry(&self, allowed: bool, can_retry_more: bool) -> bool {
        let retry = allowed && can_retry_more && self.can_retry_after() && self.budget.try_retry();
        if retry {
            count_retry(&self.cfg.name);
        }
        retry
    }

    /// What a client is told about an attempt's failure (the last one's).
    fn attempt_error(&self, ep: &Endpoint, e: &DispatchError) -> GatewayError {
        let detail = error_chain(e.error.as_ref());
        if e.connect {
            GatewayError::new(
                ErrorKind::BadGateway,
                "upstream_unreachable",
                "the upstream could not be reached",
            )
        } else if e.timed_out {
            GatewayError::new(
                ErrorKind::GatewayTimeout,
                "upstream_timeout",
                "the upstream did not answer in time",
            )
        } else {
            GatewayError::new(
                ErrorKind::BadGateway,
                "upstream_error",
                "the upstream failed to answer",
            )
        }
        .with_detail(format!("{} {}: {detail}", self.cfg.name, ep.addr))
    }

    /// Whether a retry after a failure would find an endpoint: if none is left
    /// (the failure just ejected the only one), this attempt's own answer or error is
    /// the one to give, not `no_healthy_endpoint`.
    fn can_retry_after(&self) -> bool {
        // `pick` takes any available endpoint, the one that failed included as a last
        // resort.
        let now = mono_ms();
        self.endpoints.iter().any(|e| e.available(now))
    }

    /// One exchange with one endpoint, on its HTTP/1 pool or the HTTP/2 client.
    async fn dispatch(
        &self,
        ep: &Endpoint,
        mut req: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, DispatchError> {
        match &ep.conn {
            Some(c) => {
                // An HTTP/1.1 upstream needs a Host; a client that sent none (HTTP/1.0)
                // gets the endpoint's.
                if !req.headers().contains_key(http::header::HOST) {
                    if let Ok(v) = http::HeaderValue::from_str(ep.authority.as_str()) {
                        req.headers_mut().insert(http::header::HOST, v);
                    }
                }
                c.send(req).await.map_err(|e| DispatchError {
                    connect: e.is_connect(),
                    timed_out: false,
                    error: Box::new(e),
                })
            }
            // HTTP/2: the authority travels as `:authority`, the endpoint's (what the
            // connection dials and its certificate is checked against). A `Host` field
            // beside it that differs makes the request malformed (RFC 9113 §8.3.1), and
            // some servers refuse any `Host` at all, so none is sent: `host_header`
            // shapes HTTP/1.1 requests only.
            None => {
                req.headers_mut().remove(http::header::HOST);
                // Boxed: the HTTP/2 client's state would otherwise enlarge the future
                // of every HTTP/1 exchange too.
                Box::pin(self.client.request(req))
                    .await
                    .map_err(|e| DispatchError {
                        connect: e.is_connect(),
                        timed_out: false,
                        error: Box::new(e),
                    })
            }
        }
    }

    /// Sends a request without retries or breaker accounting (health checks).
    async fn probe(&self, ep: &Endpoint, path: &str, timeout: Duration) -> bool {
        let uri = match http::Uri::builder()
            .scheme(ep.scheme.clone())
            .authority(ep.authority.clone())
            .path_and_query(path)
            .build()
        {
            Ok(u) => u,
            Err(_) => return false,
        };
        let req = http::Request::get(uri)
            .header(http::header::HOST, ep.authority.as_str())
            .header(http::header::USER_AGENT, "lienthong-health")
            .body(Body::empty());
        let Ok(req) = req else { return false };
        match tokio::time::timeout(timeout, self.dispatch(ep, req)).await {
            Ok(Ok(rsp)) => {
                let ok = rsp.status().is_success();
                // Drain so the connection can be reused; a health answer bigger than
                // 64 KiB is not kept in memory (and its connection not reused).
                let _ = tokio::time::timeout(
                    timeout,
                    http_body_util::BodyExt::collect(http_body_util::Limited::new(
                        rsp.into_body(),
                        64 * 1024,
                    )),
                )
                .await;
                ok
            }
            _ => false,
        }
    }
}

/// Why an exchange failed, and whether it failed before anything was sent.
struct DispatchError {
    connect: bool,
    /// The attempt ran out of `retry.per_try_timeout`.
    timed_out: bool,
    error: Box<dyn std::error::Error + Send + Sync>,
}

fn count_retry(upstream: &str) {
    metrics::counter!("lienthong_upstream_retries_total", "upstream" => upstream.to_string())
        .increment(1);
}

pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

async fn health_loop(pool: Weak<Pool>) {
    loop {
        let Some(p) = pool.upgrade() else { return };
        let Some(h) = p.cfg.health.clone() else {
            return;
        };
        for ep in &p.endpoints {
            let ok = p.probe(ep, &h.path, h.timeout).await;
            let was = ep.healthy.load(Ordering::Relaxed);
            if ok == was {
                ep.health_streak.store(0, Ordering::Relaxed);
            } else {
                let streak = ep.health_streak.fetch_add(1, Ordering::Relaxed) + 1;
                let need = if ok {
                    h.healthy_threshold
                } else {
                    h.unhealthy_threshold
                };
                // Before the first verdict an endpoint counts as healthy, so a failing one
                // is marked down at once rather than after the threshold.
                if streak >= need || !p.health_known() {
                    ep.healthy.store(ok, Ordering::Relaxed);
                    ep.health_streak.store(0, Ordering::Relaxed);
                    tracing::info!(upstream = %p.cfg.name, endpoint = %ep.addr, healthy = ok, "health changed");
                }
            }
        }
        p.health_known.store(true, Ordering::Release);
        let interval = h.interval;
        drop(p);
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(balance: &str) -> Arc<Pool> {
        let text = format!(
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\n\
             [upstreams.u]\nendpoints = [\"http://127.0.0.1:1\", \"http://127.0.0.1:2\", \"http://127.0.0.1:3\"]\n\
             balance = \"{balance}\"\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"u\"\nauth.anonymous = true\n"
        );
        let cfg = crate::config::Config::parse(&text, std::path::Path::new(".")).unwrap();
        Pool::new(cfg.upstreams["u"].clone()).unwrap()
    }

    /// With every endpoint ejected, first attempts still go out, balanced as the pool
    /// says: least-outstanding keeps away from the busy ones then too.
    #[test]
    fn the_fallback_to_ejected_endpoints_keeps_the_pools_balancing() {
        let p = pool("least_outstanding");
        let far = mono_ms() + 60_000;
        for e in &p.endpoints {
            e.ejected_until_ms.store(far, Ordering::Relaxed);
        }
        // Two requests in flight on the first endpoint, one on the second.
        for (i, n) in [(0, 2), (1, 1)] {
            p.endpoints[i].outstanding.store(n, Ordering::Relaxed);
        }
        for _ in 0..6 {
            let e = p.pick(None).expect("a first attempt is not refused");
            assert!(Arc::ptr_eq(&e, &p.endpoints[2]), "picked {}", e.addr);
        }
        // A retry does not go back to ejected endpoints.
        assert!(p.pick(Some(&p.endpoints[2])).is_none());
        // Round robin goes round them.
        let p = pool("round_robin");
        for e in &p.endpoints {
            e.ejected_until_ms.store(far, Ordering::Relaxed);
        }
        let picked: std::collections::HashSet<_> = (0..3)
            .map(|_| p.pick(None).unwrap().addr.to_string())
            .collect();
        assert_eq!(picked.len(), 3);
    }
}
