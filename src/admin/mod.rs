//! The admin listener (loopback by default): health, readiness, Prometheus metrics,
//! the running config, upstream state and reload. Kept off the public listeners so
//! that operations endpoints are never reachable through a route.

use crate::body::Body;
use crate::error::{ErrorKind, GatewayError};
use crate::pipeline::respond;
use crate::runtime::Gateway;
use crate::server::tls::TlsState;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub async fn serve(
    gw: Arc<Gateway>,
    listener: TcpListener,
    tls: Vec<Arc<TlsState>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Ok((stream, _peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let gw = gw.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let gw = gw.clone();
                let tls = tls.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&gw, &tls, req).await) }
            });
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            let _ = b.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::full(
        serde_json::to_vec_pretty(&v).unwrap_or_default(),
    ));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

/// Every admin answer carries a request id (the caller's `X-Request-Id` when sane), and
/// every refusal is the gateway's JSON error body with it (`respond::error_response`).
///
/// Every request to an `/admin/…` endpoint (refused ones included) leaves an `admin`
/// audit record: those endpoints change the gateway's state or read its audit log.
/// Probes (`/health/…`, `/metrics`) do not: they come every few seconds and change nothing.
async fn handle(gw: &Gateway, tls: &[Arc<TlsState>], req: Request<Incoming>) -> Response<Body> {
    let start = std::time::Instant::now();
    let rid = crate::pipeline::request_id(req.headers());
    let rid_str = rid.to_str().unwrap_or_default().to_string();
    let audited = req.uri().path().starts_with("/admin/").then(|| {
        let target = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        (req.method().to_string(), target)
    });
    let res = match gate(gw, &req) {
        Err(e) => Err(e),
        Ok(()) => answer(gw, tls, req, &rid_str).await,
    };
    let error = res.as_ref().err().map(|e| e.code);
    let mut rsp = match res {
        Ok(r) => r,
        Err(e) => respond::error_response(&e, &rid_str),
    };
    if let (Some((method, target)), Some(a)) = (audited, gw.runtime().audit.clone()) {
        use crate::audit::record::{AuditRecord, ErrorInfo, RecordKind};
        let mut r = AuditRecord::new(RecordKind::Admin, rid_str);
        r.listener = "admin".into();
        r.route = Some("admin".into());
        r.method = Some(method);
        r.set_path(&target);
        r.status = Some(rsp.status().as_u16());
        r.error = error.map(|code| ErrorInfo {
            kind: code.to_string(),
            code: None,
        });
        r.latency_us = start.elapsed().as_micros() as u64;
        if a.writer.submit_nowait(r).is_err() {
            metrics::counter!("lienthong_audit_dropped_total").increment(1);
        }
    }
    rsp.headers_mut()
        .insert(crate::pipeline::headers::X_REQUEST_ID.clone(), rid);
    rsp
}

/// The admin endpoints change state and show citizens' audit data, and they have no
/// credentials of their own: what keeps them private is the listener's address
/// (loopback by default). A web page open in a browser on that host must not reach them
/// either: a request with an `Origin` (which browsers add to cross-site requests, forms
/// included) is refused, and so is a `Host` that is not an IP literal, `localhost` or
/// one of `[admin] hosts`, since a DNS name that an attacker re-points at 127.0.0.1
/// (DNS rebinding) would otherwise let a page read the answers.
fn gate(gw: &Gateway, req: &Request<Incoming>) -> Result<(), GatewayError> {
    if req.headers().contains_key(header::ORIGIN) {
        return Err(GatewayError::new(
            ErrorKind::Forbidden,
            "cross_origin",
            "the admin API does not answer requests made by web pages",
        ));
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    if !host_allowed(host, &gw.runtime().config.admin.hosts) {
        return Err(GatewayError::new(
            ErrorKind::Forbidden,
            "host_not_allowed",
            "the admin API answers requests addressed to an IP address, localhost or a name \
             in [admin] hosts",
        ));
    }
    Ok(())
}

/// Whether `host` (a `Host` field: name or IP literal, with an optional port) may reach
/// the admin API. An absent `Host` (HTTP/1.0 tools) passes: browsers always send one.
fn host_allowed(host: &str, names: &[String]) -> bool {
    if host.is_empty() {
        return true;
    }
    let name = match host.strip_prefix('[') {
        // `[v6]:port`
        Some(rest) => {
            return rest
                .split(']')
                .next()
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(n, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                n
            } else {
                host
            }
        }),
    };
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// An admin query parameter, percent-decoded (kept as written when that fails).
fn param(q: &str, k: &str) -> Option<String> {
    q.split('&')
        .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
        .map(|v| crate::pipeline::normalize::percent_decode(v).unwrap_or_else(|| v.to_string()))
}

/// An admin query parameter read as a `T`; one that does not parse is a 400.
fn parsed<T: std::str::FromStr>(q: &str, k: &'static str) -> Result<Option<T>, GatewayError> {
    param(q, k)
        .map(|v| {
            v.parse().map_err(|_| {
                GatewayError::bad_request("bad_parameter", format!("{k}={v:?} is not valid here"))
            })
        })
        .transpose()
}

/// Most records one `/admin/audit/records` answer holds (`limit`, default 100); use
/// `from_index` to page, or `lienthong audit export` for bulk.
const MAX_RECORDS: usize = 1000;

/// An admin action the gateway could not carry out (its store, the audit log); the
/// operator sees why.
fn failed(code: &'static str, why: impl std::fmt::Display) -> GatewayError {
    GatewayError::new(ErrorKind::Internal, code, why.to_string())
}

fn not_found(message: &str) -> GatewayError {
    GatewayError::new(ErrorKind::NotFound, "not_found", message.to_string())
}

async fn answer(
    gw: &Gateway,
    tls: &[Arc<TlsState>],
    req: Request<Incoming>,
    rid: &str,
) -> Result<Response<Body>, GatewayError> {
    let path = req.uri().path().to_string();
    let path = path.as_str();
    let q = req.uri().query().unwrap_or("").to_string();
    let q = q.as_str();
    Ok(match (req.method(), path) {
        (&Method::GET, "/health/live") => {
            json(StatusCode::OK, serde_json::json!({"status": "live"}))
        }
        (&Method::GET, "/health/ready") => {
            if gw.ready() {
                json(StatusCode::OK, serde_json::json!({"status": "ready"}))
            } else {
                let e = GatewayError::unavailable(
                    "not_ready",
                    "the config is loaded but upstream health or a token issuer's key set is not known yet, or the gateway is stopping",
                    1,
                );
                let mut r = respond::error_response(&e, rid);
                // Probes that read the body see the state too.
                *r.body_mut() = Body::full(
                    serde_json::to_vec(&serde_json::json!({
                        "status": "not_ready", "code": e.code, "message": e.message, "request_id": rid,
                    }))
                    .unwrap_or_default(),
                );
                r
            }
        }
        (&Method::GET, "/metrics") => {
            let rt = gw.runtime();
            let mut text = gw.metrics.render();
            scrape_gauges(&mut text, &rt).await;
            // A plain counter of the gateway's own (one relaxed add per request).
            text.push_str(&format!(
                "# HELP lienthong_fast_path_requests_total Requests served by the HTTP/1 fast path.\n\
                 # TYPE lienthong_fast_path_requests_total counter\n\
                 lienthong_fast_path_requests_total {}\n",
                gw.fast_path_requests.load(std::sync::atomic::Ordering::Relaxed)
            ));
            let mut r = Response::new(Body::full(text));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        (&Method::GET, "/admin/config") => {
            let rt = gw.runtime();
            json(
                StatusCode::OK,
                serde_json::json!({"generation": rt.generation, "config": rt.config.redacted_json()}),
            )
        }
        (&Method::GET, "/admin/upstreams") => {
            let rt = gw.runtime();
            let v: serde_json::Map<String, serde_json::Value> = rt
                .pools
                .iter()
                .map(|(name, p)| {
                    let eps: Vec<_> = p
                        .endpoints
                        .iter()
                        .map(|e| {
                            serde_json::json!({
                                "endpoint": e.addr.to_string(),
                                "healthy": e.is_healthy(),
                                "outstanding": e.outstanding(),
                            })
                        })
                        .collect();
                    (
                        name.clone(),
                        serde_json::json!({
                            "circuit_open": p.breaker_open(),
                            "health_known": p.health_known(),
                            "endpoints": eps,
                        }),
                    )
                })
                .collect();
            json(StatusCode::OK, serde_json::Value::Object(v))
        }
        (&Method::GET, "/admin/lookups") => {
            let rt = gw.runtime();
            let mut out = serde_json::Map::new();
            for (name, l) in &rt.lookups {
                out.insert(
                    name.clone(),
                    serde_json::json!({
                        "by_key": l.by_key.stats().await,
                        "whole_table": l.whole.stats().await,
                    }),
                );
            }
            json(StatusCode::OK, serde_json::Value::Object(out))
        }
        (&Method::POST, p) if p.starts_with("/admin/lookups/") => {
            let rt = gw.runtime();
            let rest = &p["/admin/lookups/".len()..];
            let key = param(q, "key");
            let Some((name, action)) = rest.split_once('/') else {
                return Err(not_found("use /admin/lookups/NAME/purge or /refresh"));
            };
            let Some(l) = rt.lookups.get(name) else {
                return Err(not_found("no such lookup"));
            };
            let view = if key.is_some() { &l.by_key } else { &l.whole };
            match action {
                "purge" => {
                    if key.is_none() {
                        l.by_key.purge_all();
                        l.whole.purge_all();
                    } else {
                        view.purge(key.as_deref())
                            .await
                            .map_err(|e| GatewayError::bad_request("bad_key", e.to_string()))?;
                    }
                    tracing::info!(lookup = name, key = ?key, "admin: lookup purged");
                    json(StatusCode::OK, serde_json::json!({"status": "purged"}))
                }
                "refresh" => match view.refresh_now(key.as_deref()).await {
                    Ok(s) => json(
                        StatusCode::OK,
                        serde_json::json!({"status": "refreshed", "etag": s.etag}),
                    ),
                    Err(e) => {
                        return Err(GatewayError::new(
                            ErrorKind::BadGateway,
                            "refresh_failed",
                            e.to_string(),
                        ))
                    }
                },
                _ => return Err(not_found("use purge or refresh")),
            }
        }
        (&Method::GET, "/admin/audit/stats") => match gw.runtime().audit.clone() {
            Some(a) => {
                let st = a.writer.stats();
                json(
                    StatusCode::OK,
                    serde_json::json!({
                        "records_written": st.records_written, "batches": st.batches,
                        "checkpoints": st.checkpoints, "queue_depth": st.queue_depth,
                        "queue_full": st.queue_full, "last_commit_latency_us": st.last_commit_latency_us,
                        "failures": st.failures, "next_index": st.next_index,
                        "verifier_key": a.verifier.to_string(),
                    }),
                )
            }
            None => return Err(not_found("no audit log configured")),
        },
        (&Method::GET, "/admin/audit/records") => match gw.runtime().audit.clone() {
            Some(a) => {
                let limit = parsed::<usize>(q, "limit")?.unwrap_or(100);
                if limit > MAX_RECORDS {
                    return Err(GatewayError::bad_request(
                        "bad_parameter",
                        format!("limit is at most {MAX_RECORDS}; page with from_index"),
                    ));
                }
                let from_index = parsed::<u64>(q, "from_index")?;
                if from_index.is_some_and(|i| i > i64::MAX as u64) {
                    return Err(GatewayError::bad_request(
                        "bad_parameter",
                        "from_index is beyond any record",
                    ));
                }
                let filter = crate::store::audit::Filter {
                    dossier: param(q, "dossier"),
                    agency: param(q, "agency"),
                    route: param(q, "route"),
                    status: parsed(q, "status")?,
                    from_index,
                    limit: Some(limit),
                    ..Default::default()
                };
                let db = a.cfg.db.clone();
                match tokio::task::spawn_blocking(move || crate::audit::writer::query(&db, &filter))
                    .await
                {
                    Ok(Ok(rows)) => json(
                        StatusCode::OK,
                        serde_json::Value::Array(
                            rows.into_iter()
                                .map(|(i, r)| serde_json::json!({"index": i, "record": r}))
                                .collect(),
                        ),
                    ),
                    Ok(Err(e)) => return Err(failed("audit_query_failed", e)),
                    Err(_) => return Err(failed("audit_query_failed", "query task failed")),
                }
            }
            None => return Err(not_found("no audit log configured")),
        },
        (&Method::POST, "/admin/audit/checkpoint") => match gw.runtime().audit.clone() {
            Some(a) => match a.writer.checkpoint_now().await {
                Ok(cp) => json(
                    StatusCode::OK,
                    serde_json::json!({"checkpoint": cp.to_text()}),
                ),
                Err(e) => return Err(failed("checkpoint_failed", e)),
            },
            None => return Err(not_found("no audit log configured")),
        },
        (&Method::GET, "/admin/exchange/outbox") => match gw.runtime().exchange.clone() {
            Some(x) => {
                use crate::store::exchange::{ExchangeStore, OutboxState};
                let state = match param(q, "state") {
                    None => None,
                    Some(s) => Some(OutboxState::parse(&s).ok_or_else(|| {
                        GatewayError::bad_request(
                            "bad_parameter",
                            format!("state={s:?} is not an outbox state"),
                        )
                    })?),
                };
                // Paged by id: `after` (the last id of the previous page) and `limit`.
                let number = |k: &str, default: i64, max: i64| match param(q, k) {
                    None => Ok(default),
                    Some(v) => v
                        .parse::<i64>()
                        .ok()
                        .filter(|n| (0..=max).contains(n))
                        .ok_or_else(|| {
                            GatewayError::bad_request(
                                "bad_parameter",
                                format!("{k}={v:?} is not a number from 0 to {max}"),
                            )
                        }),
                };
                let after = number("after", 0, i64::MAX)?;
                let limit = number("limit", 500, 5000)? as usize;
                match x.store.list_outbox(state, after, limit).await {
                    Ok(items) => json(
                        StatusCode::OK,
                        serde_json::Value::Array(
                            items
                                .iter()
                                .map(|i| {
                                    serde_json::json!({
                                        "id": i.id, "destination": i.destination, "dossier_code": i.dossier_code,
                                        "event_seq": i.event_seq, "state": i.state.as_str(), "attempts": i.attempts,
                                        "next_attempt_at_ms": i.next_attempt_at, "last_error": i.last_error,
                                    })
                                })
                                .collect(),
                        ),
                    ),
                    Err(e) => {
                        return Err(failed("store_error", e))
                    }
                }
            }
            None => return Err(not_found("no exchange configured")),
        },
        (&Method::POST, p) if p.starts_with("/admin/exchange/outbox/") => {
            match gw.runtime().exchange.clone() {
                Some(x) => {
                    use crate::store::exchange::ExchangeStore;
                    let rest = &p["/admin/exchange/outbox/".len()..];
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or(0);
                    let r = match rest.split_once('/') {
                        Some((id, "retry")) => match id.parse() {
                            Ok(id) => x.store.retry_dead(id, now).await,
                            Err(_) => Ok(false),
                        },
                        Some((id, "cancel")) => match id.parse() {
                            Ok(id) => x.store.cancel(id, "cancelled by admin".into(), now).await,
                            Err(_) => Ok(false),
                        },
                        _ => Ok(false),
                    };
                    tracing::info!(action = rest, "admin: outbox action");
                    match r {
                        Ok(true) => json(StatusCode::OK, serde_json::json!({"status": "done"})),
                        Ok(false) => {
                            return Err(GatewayError::new(
                                ErrorKind::Conflict,
                                "not_applicable",
                                "no such item in a state that allows this",
                            ))
                        }
                        Err(e) => return Err(failed("store_error", e)),
                    }
                }
                None => return Err(not_found("no exchange configured")),
            }
        }
        (&Method::POST, "/admin/reload") => {
            for t in tls {
                t.refresh(true);
            }
            match gw.reload().await {
                Ok(g) => json(
                    StatusCode::OK,
                    serde_json::json!({"status": "reloaded", "generation": g}),
                ),
                Err(p) => {
                    let problems: Vec<String> = p.0.iter().map(|x| x.to_string()).collect();
                    json(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        serde_json::json!({
                            "code": "invalid_config",
                            "message": "the new config is invalid; the running config is unchanged",
                            "request_id": rid,
                            "problems": problems,
                        }),
                    )
                }
            }
        }
        (_, p) => {
            // A known endpoint asked with another method: 405 with the one it takes.
            const GET: &[&str] = &[
                "/health/live",
                "/health/ready",
                "/metrics",
                "/admin/config",
                "/admin/upstreams",
                "/admin/lookups",
                "/admin/audit/stats",
                "/admin/audit/records",
                "/admin/exchange/outbox",
            ];
            const POST: &[&str] = &["/admin/audit/checkpoint", "/admin/reload"];
            let allow = if GET.contains(&p) {
                "GET"
            } else if POST.contains(&p)
                || p.starts_with("/admin/lookups/")
                || p.starts_with("/admin/exchange/outbox/")
            {
                "POST"
            } else {
                return Err(not_found("no such admin endpoint"));
            };
            return Err(GatewayError::method_not_allowed(
                "method_not_allowed",
                "method not allowed here",
                allow,
            ));
        }
    })
}

/// Gauges that are cheaper to read on scrape than to keep on the hot path, read from
/// the running generation and written in the exposition format here rather than set in
/// the recorder: the recorder keeps a series for good, so a pool, endpoint or lookup a
/// reload removed would go on being reported with its last value.
async fn scrape_gauges(out: &mut String, rt: &crate::runtime::Runtime) {
    let mut g = GaugeText::new(out);
    let mut endpoints = Vec::new();
    for (name, p) in &rt.pools {
        g.one(
            "lienthong_upstream_circuit_open",
            "1 while the upstream's circuit breaker refuses requests.",
            &[("upstream", name)],
            if p.breaker_open() { 1.0 } else { 0.0 },
        );
        for e in &p.endpoints {
            // One series per endpoint address: a pool may list an address twice, and
            // two samples of one series are invalid exposition (the first is given).
            let addr = e.label.to_string();
            if !endpoints.iter().any(|(n, a, _)| *n == name && *a == addr) {
                endpoints.push((name, addr, e));
            }
        }
    }
    type EndpointGauge = fn(&crate::upstream::Endpoint) -> Option<f64>;
    let per_endpoint: [(&str, &str, EndpointGauge); 3] = [
        (
            "lienthong_upstream_endpoint_healthy",
            "1 while the endpoint is taken as healthy (health checks, passive ejection).",
            |e| Some(if e.is_healthy() { 1.0 } else { 0.0 }),
        ),
        (
            "lienthong_upstream_outstanding",
            "Requests in flight to the endpoint.",
            |e| Some(e.outstanding() as f64),
        ),
        (
            "lienthong_upstream_idle_connections",
            "Idle keep-alive connections held for the endpoint (HTTP/1 pools).",
            |e| e.idle_connections().map(|n| n as f64),
        ),
    ];
    for (metric, help, read) in per_endpoint {
        for (pool, addr, e) in &endpoints {
            if let Some(v) = read(e) {
                g.one(metric, help, &[("upstream", pool), ("endpoint", addr)], v);
            }
        }
    }
    let mut lookups = Vec::new();
    for (name, l) in &rt.lookups {
        for (view, lk) in [("key", &l.by_key), ("table", &l.whole)] {
            lookups.push((name, view, lk.stats().await));
        }
    }
    type LookupGauge = fn(&crate::cache::lookup::LookupStats) -> f64;
    let per_lookup: [(&str, &str, LookupGauge); 8] = [
        ("lienthong_lookup_entries", "Entries cached.", |s| {
            s.entries as f64
        }),
        (
            "lienthong_lookup_weighted_bytes",
            "Bytes cached (weighted size).",
            |s| s.weighted_size as f64,
        ),
        (
            "lienthong_lookup_hits",
            "Lookups answered from the cache.",
            |s| s.hits as f64,
        ),
        (
            "lienthong_lookup_misses",
            "Lookups the cache could not answer.",
            |s| s.misses as f64,
        ),
        (
            "lienthong_lookup_hit_ratio",
            "hits / (hits + misses).",
            |s| s.hit_ratio,
        ),
        (
            "lienthong_lookup_stale_served",
            "Stale entries served while the source failed.",
            |s| s.stale_served as f64,
        ),
        (
            "lienthong_lookup_source_calls",
            "Calls made to the lookup's source.",
            |s| s.source_calls as f64,
        ),
        (
            "lienthong_lookup_source_errors",
            "Source calls that failed.",
            |s| s.source_errors as f64,
        ),
    ];
    for (metric, help, read) in per_lookup {
        for (name, view, st) in &lookups {
            g.one(metric, help, &[("lookup", name), ("view", view)], read(st));
        }
    }
    if let Some(c) = rt.auth.cache_stats() {
        let total = c.hits + c.misses;
        let ratio = if total == 0 {
            0.0
        } else {
            c.hits as f64 / total as f64
        };
        for (metric, help, v) in [
            (
                "lienthong_auth_token_cache_hits",
                "Tokens answered from the verified-token cache.",
                c.hits as f64,
            ),
            (
                "lienthong_auth_token_cache_misses",
                "Tokens verified in full.",
                c.misses as f64,
            ),
            (
                "lienthong_auth_token_cache_hit_ratio",
                "hits / (hits + misses).",
                ratio,
            ),
        ] {
            g.one(metric, help, &[], v);
        }
    }
}

/// Writes gauge samples in the Prometheus text format, each family's `HELP` and `TYPE`
/// once, before its first sample (callers give a family's samples one after another).
struct GaugeText<'a> {
    out: &'a mut String,
    last: &'static str,
}

impl<'a> GaugeText<'a> {
    fn new(out: &'a mut String) -> Self {
        GaugeText { out, last: "" }
    }

    fn one(&mut self, metric: &'static str, help: &str, labels: &[(&str, &str)], value: f64) {
        use std::fmt::Write;
        if self.last != metric {
            self.last = metric;
            let _ = write!(self.out, "# HELP {metric} {help}\n# TYPE {metric} gauge\n");
        }
        self.out.push_str(metric);
        for (i, (k, v)) in labels.iter().enumerate() {
            self.out.push(if i == 0 { '{' } else { ',' });
            let _ = write!(self.out, "{k}=\"");
            for c in v.chars() {
                match c {
                    '\\' => self.out.push_str("\\\\"),
                    '"' => self.out.push_str("\\\""),
                    '\n' => self.out.push_str("\\n"),
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }
        if !labels.is_empty() {
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}
