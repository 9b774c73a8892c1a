//! One intake channel (issue #6): the canonical dossier (hồ sơ) model and its
//! validation (`dossier`), the durable store with group commit, idempotency and the
//! per-destination outbox (`crate::store::exchange`), and the delivery engine (`outbox`).
//!
//! Design constraints (what is promised):
//! - A dossier is committed (WAL, `synchronous=FULL`, one fsync shared by every intake
//!   queued at that moment) before its receipt is returned; never a receipt for
//!   something not on disk. A full spool refuses with a retry time instead.
//! - Idempotency by dossier code or Idempotency-Key: the same content gets the same
//!   receipt, different content a conflict. A key is scoped to the caller that sent it
//!   (`pipeline::local::idempotency_scope`): one agency's key never reaches another's dossier.
//! - Delivery is at-least-once per destination with the dossier code as the receiver's
//!   idempotency key; an update never overtakes its dossier's creation; backoff with
//!   full jitter and a cap; dead letter after N attempts or a permanent refusal.
//! - States: outbox rows go `pending → sending (leased) → delivered | retrying | dead`;
//!   a lease that expires (crash, SIGKILL) makes the row claimable again.

pub mod dossier;
pub mod outbox;

use crate::auth::rules::AccessRule;
use crate::body::Body;
use crate::config::ExchangeCfg;
use crate::runtime::Gateway;
use crate::upstream::OutboundRequest;
use outbox::{Deliverer, DeliveryOutcome};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// The running intake channel: its store, who may use it, and the delivery loop's stop switch.
pub struct Exchange {
    pub cfg: ExchangeCfg,
    pub store: Arc<crate::store::exchange::SqliteStore>,
    pub rule: Option<AccessRule>,
    stop: tokio::sync::watch::Sender<bool>,
    /// The delivery loop, awaited by [`Exchange::stop`].
    engine: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Delivers outbox items to their destination's upstream pool: `POST path` with the
/// item's JSON and the dossier code (plus event number) as `Idempotency-Key`, so a
/// redelivery after a crash is recognisable at the receiver. Each attempt is audited.
struct HttpDeliverer {
    gw: Weak<Gateway>,
    timeout: Duration,
    targets: std::collections::BTreeMap<String, (String, String)>,
    adapters: std::collections::BTreeMap<String, crate::config::DeliveryAdapter>,
}

/// A destination whose adapter reads its answers (e.g. DVCQG answers HTTP 200 with an
/// `error_code`): the operation's response step must yield `{"ok": bool, "exists"?: bool,
/// "exists_said"?: bool, "code"?, "message"?}`. `ok` or `exists` (the receiver already has
/// it: the dossier code is its idempotency key) is delivered, `exists` only when
/// `exists_said` (the answer's own words, where its code alone is ambiguous) is absent or
/// true; anything else is retried, and after the attempts run out, dead-lettered with the
/// counterpart's code and message.
fn judge_answer(step: &crate::adapter::Step, body: &[u8], dest: &str) -> DeliveryOutcome {
    let v = match step.run(body, &crate::adapter::Context::new()) {
        Ok(out) => serde_json::from_slice::<serde_json::Value>(&out.body).unwrap_or_default(),
        Err(e) => return DeliveryOutcome::Retry(format!("{dest}: answer not understood: {e}")),
    };
    // `true`, or the text `"true"` a mapping without `type = "boolean"` writes.
    let yes = |x: &serde_json::Value| *x == true || *x == "true";
    let exists = yes(&v["exists"]) && v.get("exists_said").is_none_or(yes);
    if yes(&v["ok"]) || exists {
        return DeliveryOutcome::Delivered;
    }
    let text = |k: &str| match &v[k] {
        serde_json::Value::String(s) => s.chars().take(120).collect(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    DeliveryOutcome::Retry(format!(
        "{dest} refused: code {} {}",
        text("code"),
        text("message")
    ))
}

/// The operation that renders an item for its destination: dossiers through the dossier
/// operation, events (of the kinds the destination takes) through the event operation.
/// `None`: the destination does not take this item.
fn operation_for<'a>(
    a: &'a crate::config::DeliveryAdapter,
    item: &crate::store::exchange::OutboxItem,
) -> Option<&'a Arc<crate::adapter::Operation>> {
    if item.is_creation() {
        return Some(&a.dossier);
    }
    let kind = serde_json::from_str::<serde_json::Value>(&item.payload)
        .ok()
        .and_then(|v| v["kind"].as_str().map(str::to_string))
        .unwrap_or_default();
    a.event
        .as_ref()
        .filter(|_| a.events.as_ref().is_none_or(|k| k.contains(&kind)))
}

impl Deliverer for HttpDeliverer {
    fn deliver(
        &self,
        dest: &str,
        item: &crate::store::exchange::OutboxItem,
    ) -> Pin<Box<dyn Future<Output = DeliveryOutcome> + Send + '_>> {
        let target = self.targets.get(dest).cloned();
        let adapter_cfg = self.adapters.get(dest);
        let dest = dest.to_string();
        let code = item.dossier_code.clone();
        let key = format!("{}:{}", item.dossier_code, item.event_seq);
        let seq = item.event_seq;
        let op = adapter_cfg.map(|a| (a, operation_for(a, item).cloned()));
        let payload = item.payload.clone();
        Box::pin(async move {
            let Some(gw) = self.gw.upgrade() else {
                return DeliveryOutcome::Retry("gateway stopping".into());
            };
            let Some((up, path)) = target else {
                return DeliveryOutcome::Permanent(format!("no delivery target for {dest}"));
            };
            let rt = gw.runtime();
            let Some(pool) = rt.pools.get(&up).cloned() else {
                return DeliveryOutcome::Retry(format!("upstream {up} is not configured"));
            };
            let mut headers = http::HeaderMap::new();
            let mut adapter = None;
            let mut answer_op = None;
            let mut sessions = Vec::new();
            // What the record proves was sent: the payload as stored, and what went on
            // the wire when an adapter rendered it.
            let payload_digest = crate::audit::record::Sha256Hex::of(payload.as_bytes());
            let payload_len = payload.len() as u64;
            let mut translated_digest = None;
            let body = match op {
                None => {
                    headers.insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Body::full(payload)
                }
                Some((_, None)) => return DeliveryOutcome::Delivered,
                Some((a, Some(op))) => {
                    // Context values first: a session may need a login (a failed one is
                    // retried). A payload the adapter cannot map will never map: that is a
                    // permanent failure, kept with its reason.
                    let (mut ctx, used) =
                        match crate::config::adapter_context(&a.context, &rt.pools).await {
                            Ok(c) => c,
                            Err(e) => {
                                return DeliveryOutcome::Retry(format!("{dest}: {}", e.message))
                            }
                        };
                    sessions = used;
                    ctx.insert("dossier_code".into(), code.clone());
                    ctx.insert("event_seq".into(), seq.to_string());
                    let Some(step) = op.request.as_ref() else {
                        return DeliveryOutcome::Permanent(
                            "the operation has no request step".into(),
                        );
                    };
                    let out = match step.run(payload.as_bytes(), &ctx) {
                        Ok(out) => out,
                        Err(e) => {
                            return DeliveryOutcome::Permanent(format!("adapter {}: {e}", a.system))
                        }
                    };
                    if let Ok(v) = http::HeaderValue::from_str(&out.content_type) {
                        headers.insert(http::header::CONTENT_TYPE, v);
                    }
                    if let Some(v) = out
                        .soap_action
                        .as_deref()
                        .and_then(|v| http::HeaderValue::from_str(v).ok())
                    {
                        headers.insert("soapaction", v);
                    }
                    adapter = Some(crate::audit::record::Adapter {
                        id: a.system.clone(),
                        version: a.version.clone(),
                    });
                    answer_op = Some(op);
                    translated_digest = Some(crate::audit::record::Sha256Hex::of(&out.body));
                    Body::full(out.body)
                }
            };
            if let Ok(v) = http::HeaderValue::from_str(&key) {
                headers.insert("idempotency-key", v);
            }
            if let Ok(v) = http::HeaderValue::from_str(&code) {
                headers.insert("x-lienthong-dossier", v);
            }
            let Ok(pq) = path.parse() else {
                return DeliveryOutcome::Permanent(format!("bad delivery path {path}"));
            };
            let req = OutboundRequest {
                method: http::Method::POST,
                path_and_query: pq,
                headers,
                body,
                // The dossier code is the receiver's idempotency key: resending is safe.
                idempotent: true,
                timeout: self.timeout.min(pool.cfg.request_timeout),
                host_from_endpoint: true,
            };
            let started = std::time::Instant::now();
            let mut endpoint = None;
            let mut answer_digest = None;
            let outcome = match pool.send(req).await {
                Ok(a) => {
                    endpoint = Some(a.endpoint.label.to_string());
                    let status = a.response.status().as_u16();
                    let answer =
                        crate::body::collect_capped(a.response.into_body(), 64 * 1024).await;
                    if let Ok(b) = &answer {
                        answer_digest = Some((crate::audit::record::Sha256Hex::of(b), b.len()));
                    }
                    let mut o = outbox::classify_http_status(status, &dest);
                    let judge = answer_op.as_ref().and_then(|op| op.response.as_ref());
                    if let (DeliveryOutcome::Delivered, Some(step)) = (&o, judge) {
                        o = match answer {
                            Ok(body) => judge_answer(step, &body, &dest),
                            Err(_) => DeliveryOutcome::Retry(format!("{dest}: answer unreadable")),
                        };
                    }
                    if !matches!(o, DeliveryOutcome::Delivered) {
                        // A refused call may be a stale session: the next attempt logs in.
                        for (login, used) in &sessions {
                            login.invalidate(used);
                        }
                    }
                    (Some(status), o)
                }
                Err(e) => {
                    // The stored reason is shown to agencies (the dossier's timeline):
                    // code and message only. Pools, endpoints and error chains go to the
                    // log.
                    tracing::warn!(destination = %dest, error = %e, "delivery attempt failed");
                    (
                        None,
                        DeliveryOutcome::Retry(format!("{dest}: {} ({})", e.message, e.code)),
                    )
                }
            };
            if let Some(a) = &rt.audit {
                let mut r = crate::audit::record::AuditRecord::new(
                    crate::audit::record::RecordKind::Delivery,
                    key.clone(),
                );
                // Dated when the attempt started, not when its answer came.
                r.time = crate::audit::record::format_rfc3339_ms(
                    crate::audit::record::wall_time_of(started),
                );
                r.listener = "delivery".into();
                r.route = Some(format!("exchange:{dest}"));
                r.upstream = Some(up.clone());
                r.method = Some("POST".into());
                r.set_path(&path);
                r.status = outcome.0;
                r.dossier = Some(code.clone());
                r.adapter = adapter;
                r.endpoint = endpoint;
                r.bytes_in = payload_len;
                r.request_sha256 = Some(payload_digest);
                r.request_translated_sha256 = translated_digest;
                if let Some((d, n)) = answer_digest {
                    r.response_sha256 = Some(d);
                    r.bytes_out = n as u64;
                }
                r.latency_us = started.elapsed().as_micros() as u64;
                if let DeliveryOutcome::Retry(m) | DeliveryOutcome::Permanent(m) = &outcome.1 {
                    r.error = Some(crate::audit::record::ErrorInfo {
                        kind: "delivery_failed".into(),
                        code: Some(m.chars().take(120).collect()),
                    });
                }
                let _ = a.writer.submit_nowait(r);
            }
            let label = match &outcome.1 {
                DeliveryOutcome::Delivered => "delivered",
                DeliveryOutcome::Retry(_) => "retry",
                DeliveryOutcome::Permanent(_) => "permanent",
            };
            metrics::counter!("lienthong_deliveries_total", "destination" => dest, "outcome" => label).increment(1);
            outcome.1
        })
    }
}

impl Exchange {
    pub fn open(cfg: &ExchangeCfg) -> Result<Arc<Exchange>, String> {
        if let Some(dir) = cfg.db.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let opts = crate::store::exchange::SqliteOptions {
            spool_capacity: cfg.spool_capacity,
            retry_after_secs: cfg.retry_after.as_secs().max(1),
            ..Default::default()
        };
        let store = Arc::new(
            crate::store::exchange::SqliteStore::open(&cfg.db, opts).map_err(|e| e.to_string())?,
        );
        let rule = cfg.auth.as_ref().and_then(|a| {
            AccessRule::from_config(a.anonymous, &a.agencies, &a.roles, &a.scopes).ok()
        });
        Ok(Arc::new(Exchange {
            cfg: cfg.clone(),
            store,
            rule,
            stop: tokio::sync::watch::channel(false).0,
            engine: std::sync::Mutex::new(None),
        }))
    }

    /// Starts the delivery loop (needs a Tokio runtime). It stops when `stop` is
    /// called or the gateway is gone.
    pub fn start_delivery(self: &Arc<Self>, gw: Weak<Gateway>) {
        let deliverer = Arc::new(HttpDeliverer {
            gw,
            timeout: self.cfg.delivery_timeout,
            targets: self.cfg.deliveries.clone(),
            adapters: self.cfg.delivery_adapters.clone(),
        });
        let cfg = outbox::EngineConfig {
            lease_ms: 2 * self.cfg.delivery_timeout.as_millis() as i64,
            delivery_timeout: self.cfg.delivery_timeout,
            per_destination: self.cfg.max_in_flight_per_destination,
            backoff: outbox::BackoffPolicy {
                base_ms: self.cfg.backoff_base.as_millis() as i64,
                cap_ms: self.cfg.backoff_cap.as_millis() as i64,
                max_attempts: self.cfg.max_attempts,
            },
            ..Default::default()
        };
        let engine = outbox::OutboxEngine::new(
            self.store.clone() as Arc<dyn crate::store::exchange::ExchangeStore>,
            deliverer,
            Arc::new(crate::clock::SystemClock),
            cfg,
        );
        let stop = self.stop.subscribe();
        let task = tokio::spawn(async move {
            engine
                .run(stop, Duration::from_millis(100), &|r| {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "delivery tick failed");
                    }
                })
                .await;
        });
        *self.engine.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
    }

    /// Stops the delivery loop and waits for the deliveries in progress to finish (each
    /// is bounded by `delivery_timeout`), so that their outcomes are stored and their
    /// audit records submitted before the audit log closes. Those cut off at the bound
    /// stay leased and are delivered again after a restart (the receiver sees the same
    /// Idempotency-Key).
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self.engine.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(mut task) = task else { return };
        let bound = self.cfg.delivery_timeout + Duration::from_secs(1);
        if tokio::time::timeout(bound, &mut task).await.is_err() {
            task.abort();
            tracing::warn!("deliveries in progress did not finish in time; cut off");
        }
    }
}
