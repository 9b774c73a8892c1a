//! Metrics (Prometheus) and logs (tracing): one access-log line and one set of
//! metric updates per request, for every request including refused ones.

use crate::body::Body;
use crate::config::{LogConfig, LogFormat};
use crate::pipeline::RequestCtx;
use crate::runtime::Runtime;
use http::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Installs the process-wide metrics recorder once and returns its handle.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0, 30.0,
                    ],
                )
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Tests build several gateways in one process; the first recorder serves all.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Sets up `tracing` from the config; `RUST_LOG` overrides the level.
pub fn init_logging(cfg: &LogConfig) {
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let result = match cfg.format {
        LogFormat::Json => fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => fmt().with_env_filter(filter).try_init(),
    };
    let _ = result;
}

fn status_label(code: u16) -> metrics::SharedString {
    // The common codes as static strings so the hot path does not format them.
    match code {
        200 => "200".into(),
        201 => "201".into(),
        202 => "202".into(),
        204 => "204".into(),
        304 => "304".into(),
        400 => "400".into(),
        401 => "401".into(),
        403 => "403".into(),
        404 => "404".into(),
        405 => "405".into(),
        413 => "413".into(),
        500 => "500".into(),
        502 => "502".into(),
        503 => "503".into(),
        504 => "504".into(),
        c => c.to_string().into(),
    }
}

/// Per-route cache of metric handles by status, so the hot path does not build and
/// hash label sets for every request (a registry lookup per request showed in profiles).
pub struct RouteMetrics {
    route: metrics::SharedString,
    upstream: metrics::SharedString,
    by_status: std::sync::RwLock<Vec<(u16, metrics::Counter, metrics::Histogram)>>,
}

impl RouteMetrics {
    pub fn new(route: &str, upstream: &str) -> RouteMetrics {
        RouteMetrics {
            route: route.to_string().into(),
            upstream: upstream.to_string().into(),
            by_status: std::sync::RwLock::new(Vec::new()),
        }
    }

    fn record(&self, status: u16, seconds: f64) {
        {
            let cache = self.by_status.read().unwrap_or_else(|e| e.into_inner());
            if let Some((_, c, h)) = cache.iter().find(|(s, _, _)| *s == status) {
                c.increment(1);
                h.record(seconds);
                return;
            }
        }
        let labels = [
            ("route", self.route.clone()),
            ("upstream", self.upstream.clone()),
            ("status", status_label(status)),
        ];
        let c = metrics::counter!("lienthong_requests_total", &labels);
        let h = metrics::histogram!("lienthong_request_duration_seconds", &labels);
        c.increment(1);
        h.record(seconds);
        let mut cache = self.by_status.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() < 64 {
            cache.push((status, c, h));
        }
    }
}

pub fn record(rt: &Runtime, ctx: &RequestCtx, rsp: &Response<Body>) {
    record_status(rt, ctx, rsp.status().as_u16());
}

/// [`record`] for a request that has a status but no response: one interrupted before
/// its answer (`pipeline::Interrupted`, 499).
pub fn record_status(rt: &Runtime, ctx: &RequestCtx, status: u16) {
    let elapsed = ctx.start.elapsed();
    let m = match ctx.route_index {
        Some(i) => &rt.route_metrics[i],
        None => &rt.unrouted_metrics,
    };
    m.record(status, elapsed.as_secs_f64());
    if rt.config.log.access_log {
        tracing::info!(
            target: "access",
            request_id = ctx.request_id_str(),
            listener = &*ctx.conn.listener,
            peer = %ctx.conn.peer,
            method = %ctx.method,
            // Citizen identifiers in paths are personal data: masked as in the audit log.
            path = %crate::audit::record::mask_path(&ctx.path),
            version = ?ctx.version,
            route = ctx.route.as_deref().unwrap_or("-"),
            upstream = ctx.upstream.as_deref().unwrap_or("-"),
            endpoint = ctx.endpoint.as_deref().unwrap_or("-"),
            attempts = ctx.attempts,
            status,
            error = ctx.error.as_ref().map(|e| e.0).unwrap_or("-"),
            duration_us = elapsed.as_micros() as u64,
        );
    }
}
