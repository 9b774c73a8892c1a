//! The admin listener (loopback by default): health, readiness, Prometheus metrics,
//! the running config, upstream state and reload. Kept off the public listeners so
//! that operations endpoints are never reachable through a route.

use crate::body::Body;
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

async fn handle(gw: &Gateway, tls: &[Arc<TlsState>], req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET, "/health/live") => {
            json(StatusCode::OK, serde_json::json!({"status": "live"}))
        }
        (&Method::GET, "/health/ready") => {
            if gw.ready() {
                json(StatusCode::OK, serde_json::json!({"status": "ready"}))
            } else {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": "not_ready"}),
                )
            }
        }
        (&Method::GET, "/metrics") => {
            let rt = gw.runtime();
            // Gauges that are cheaper to read on scrape than to keep on the hot path.
            for (name, p) in &rt.pools {
                metrics::gauge!("lienthong_upstream_circuit_open", "upstream" => name.clone())
                    .set(if p.breaker_open() { 1.0 } else { 0.0 });
                for e in &p.endpoints {
                    let labels = [("upstream", name.clone()), ("endpoint", e.addr.to_string())];
                    metrics::gauge!("lienthong_upstream_endpoint_healthy", &labels)
                        .set(if e.is_healthy() { 1.0 } else { 0.0 });
                    metrics::gauge!("lienthong_upstream_outstanding", &labels)
                        .set(e.outstanding() as f64);
                }
            }
            for (name, l) in &rt.lookups {
                for (view, lk) in [("key", &l.by_key), ("table", &l.whole)] {
                    let st = lk.stats().await;
                    let labels = [("lookup", name.clone()), ("view", view.to_string())];
                    metrics::gauge!("lienthong_lookup_entries", &labels).set(st.entries as f64);
                    metrics::gauge!("lienthong_lookup_weighted_bytes", &labels)
                        .set(st.weighted_size as f64);
                    metrics::gauge!("lienthong_lookup_hits", &labels).set(st.hits as f64);
                    metrics::gauge!("lienthong_lookup_misses", &labels).set(st.misses as f64);
                    metrics::gauge!("lienthong_lookup_hit_ratio", &labels).set(st.hit_ratio);
                    metrics::gauge!("lienthong_lookup_stale_served", &labels)
                        .set(st.stale_served as f64);
                    metrics::gauge!("lienthong_lookup_source_calls", &labels)
                        .set(st.source_calls as f64);
                    metrics::gauge!("lienthong_lookup_source_errors", &labels)
                        .set(st.source_errors as f64);
                }
            }
            if let Some(c) = rt.auth.cache_stats() {
                metrics::gauge!("lienthong_auth_token_cache_hits").set(c.hits as f64);
                metrics::gauge!("lienthong_auth_token_cache_misses").set(c.misses as f64);
                let total = c.hits + c.misses;
                let ratio = if total == 0 {
                    0.0
                } else {
                    c.hits as f64 / total as f64
                };
                metrics::gauge!("lienthong_auth_token_cache_hit_ratio").set(ratio);
            }
            let mut r = Response::new(Body::full(gw.metrics.render()));
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
            let key = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("key=")))
                .map(str::to_string);
            let Some((name, action)) = rest.split_once('/') else {
                return json(
                    StatusCode::NOT_FOUND,
                    serde_json::json!({"code": "not_found", "message": "use /admin/lookups/NAME/purge or /refresh"}),
                );
            };
            let Some(l) = rt.lookups.get(name) else {
                return json(
                    StatusCode::NOT_FOUND,
                    serde_json::json!({"code": "not_found", "message": "no such lookup"}),
                );
            };
            let view = if key.is_some() { &l.by_key } else { &l.whole };
            match action {
                "purge" => {
                    if key.is_none() {
                        l.by_key.purge_all();
                        l.whole.purge_all();
                    } else {
                        let _ = view.purge(key.as_deref()).await;
                    }
                    tracing::info!(lookup = name, key = ?key, "admin: lookup purged");
                    json(StatusCode::OK, serde_json::json!({"status": "purged"}))
                }
                "refresh" => match view.refresh_now(key.as_deref()).await {
                    Ok(s) => json(
                        StatusCode::OK,
                        serde_json::json!({"status": "refreshed", "etag": s.etag}),
                    ),
                    Err(e) => json(
                        StatusCode::BAD_GATEWAY,
                        serde_json::json!({"code": "refresh_failed", "message": e.to_string()}),
                    ),
                },
                _ => json(
                    StatusCode::NOT_FOUND,
                    serde_json::json!({"code": "not_found", "message": "use purge or refresh"}),
                ),
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
            None => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"code": "not_found", "message": "no audit log configured"}),
            ),
        },
        (&Method::GET, "/admin/audit/records") => match gw.runtime().audit.clone() {
            Some(a) => {
                let q = req.uri().query().unwrap_or("").to_string();
                let get = |k: &str| {
                    q.split('&')
                        .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                        .map(str::to_string)
                };
                let filter = crate::store::audit::Filter {
                    dossier: get("dossier"),
                    agency: get("agency"),
                    route: get("route"),
                    status: get("status").and_then(|s| s.parse().ok()),
                    from_index: get("from_index").and_then(|s| s.parse().ok()),
                    limit: Some(get("limit").and_then(|s| s.parse().ok()).unwrap_or(100)),
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
                    Ok(Err(e)) => json(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        serde_json::json!({"code": "audit_query_failed", "message": e.to_string()}),
                    ),
                    Err(_) => json(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        serde_json::json!({"code": "audit_query_failed", "message": "query task failed"}),
                    ),
                }
            }
            None => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"code": "not_found", "message": "no audit log configured"}),
            ),
        },
        (&Method::POST, "/admin/audit/checkpoint") => match gw.runtime().audit.clone() {
            Some(a) => match a.writer.checkpoint_now().await {
                Ok(cp) => json(
                    StatusCode::OK,
                    serde_json::json!({"checkpoint": cp.to_text()}),
                ),
                Err(e) => json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    serde_json::json!({"code": "checkpoint_failed", "message": e.to_string()}),
                ),
            },
            None => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"code": "not_found", "message": "no audit log configured"}),
            ),
        },
        (&Method::GET, "/admin/exchange/outbox") => match gw.runtime().exchange.clone() {
            Some(x) => {
                use crate::store::exchange::{ExchangeStore, OutboxState};
                let q = req.uri().query().unwrap_or("");
                let state = q
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("state="))
                    .and_then(OutboxState::parse);
                match x.store.list_outbox(state, 0, 500).await {
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
                    Err(e) => json(StatusCode::INTERNAL_SERVER_ERROR, serde_json::json!({"code": "store_error", "message": e.to_string()})),
                }
            }
            None => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"code": "not_found", "message": "no exchange configured"}),
            ),
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
                        Ok(false) => json(
                            StatusCode::CONFLICT,
                            serde_json::json!({"code": "not_applicable", "message": "no such item in a state that allows this"}),
                        ),
                        Err(e) => json(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            serde_json::json!({"code": "store_error", "message": e.to_string()}),
                        ),
                    }
                }
                None => json(
                    StatusCode::NOT_FOUND,
                    serde_json::json!({"code": "not_found", "message": "no exchange configured"}),
                ),
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
                    metrics::counter!("lienthong_config_reloads_total", "result" => "invalid")
                        .increment(1);
                    let problems: Vec<String> = p.0.iter().map(|x| x.to_string()).collect();
                    json(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        serde_json::json!({
                            "code": "invalid_config",
                            "message": "the new config is invalid; the running config is unchanged",
                            "problems": problems,
                        }),
                    )
                }
            }
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"code": "not_found", "message": "no such admin endpoint"}),
        ),
    }
}
