//! The request path, top to bottom in [`handle`] and `proxy`:
//!
//! ```text
//! ctx    = RequestCtx::new(conn, &req)            request id, start time, peer, TLS identity
//! target = intake::check(listener, &parts)?      method form, head limits, URI length, Host, path normalisation
//!          local::respond(...)                   /lookups/NAME[/KEY] (own access rules) and /.well-known/jwks.json
//! route  = route::select(routes, target)?        host, segment-aware prefix, method → 404 / 405
//! caller = authenticate(rule, headers, cert)?   JWT (RFC 8725) + access rule → 401 / 403 / 503
//!          cached::lookup(...)                   GET routes with `cache`: answer from the response cache
//! body   = intake::body(limits, &parts, body)?   declared length over the cap → 413; streamed cap
//! body   = audit_stage::tap_request(body)        SHA-256 and size of the request as received
//! body   = translate_stage::request(...)?        JSON↔XML / SOAP wrap on routes with `translate`
//! out    = forward::prepare(route, parts, body)  hop-by-hop, forwarding fields, Host, Via, request id, caller headers
//! answer = pool.send(out).await?                 credentials, balancing, retries, breaker, timeouts → 502 / 503 / 504
//! rsp    = translate_stage::response(...)?       XML↔JSON / SOAP unwrap; faults → JSON errors
//!          cached::maybe_store(...)              storable GET answers
//! rsp    = respond::upstream(answer)             hop-by-hop, Via, request id, Content-Length
//! rsp    = respond::finish(ctx, result)          the ONE place that maps errors to status codes
//!          observe::record(ctx, &rsp)            metrics and the access log, for every request
//! rsp    = audit_stage::record_streamed(ctx, rsp) one audit record per request: fail-open when the body has gone out,
//!          audit_stage::record(...)              fail-closed before the response is sent
//! ```
//!
//! [`fast`] runs the same decisions on bytes for HTTP/1.1 requests that need no stage
//! beyond routing, the token check, the proxy header rules or a lookup's answer, and
//! hands every other request (and the connection) to [`handle`].
//!
//! Each stage is a plain function that can be tested alone. The whole request runs
//! on the config snapshot it started with, so a reload never changes a request midway.

pub mod fast;
pub mod headers;
pub mod normalize;
pub mod respond;
pub mod route;

use crate::body::{Body, BodyTooLarge};
use crate::config::{HostHeader, ListenerConfig, RouteConfig};
use crate::error::{ErrorKind, GatewayError};
use crate::runtime::Runtime;
use crate::server::ConnInfo;
use crate::upstream::OutboundRequest;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Per-request facts every stage may read.
pub struct RequestCtx {
    pub request_id: HeaderValue,
    pub start: Instant,
    pub conn: Arc<ConnInfo>,
    pub method: Method,
    pub version: http::Version,
    /// Normalised path once intake has run (for logs and metrics), else the raw one.
    pub path: String,
    pub route: Option<Arc<str>>,
    pub route_index: Option<usize>,
    pub upstream: Option<Arc<str>>,
    pub endpoint: Option<Arc<str>>,
    pub attempts: u32,
    pub error: Option<(&'static str, Option<String>)>,
    /// The verified caller, once authentication has run (None: anonymous route).
    pub caller: Option<Arc<crate::auth::caller::Caller>>,
    /// Digest and size of the request body, filled when it has been read (audit).
    pub request_digest: Option<audit_stage::DigestSlot>,
    pub upstream_us: Option<u64>,
    /// Request body kept for routes with `audit_bodies`.
    pub kept_request_body: Option<bytes::Bytes>,
    /// SHA-256 of the request as sent upstream, when a translation changed it.
    pub request_translated: Option<[u8; 32]>,
    /// SHA-256 of the upstream's response as received, when a translation changed it.
    pub response_received: Option<[u8; 32]>,
    /// Set by stages that are not plain proxying (intake): record kind and audit policy.
    pub audit_as: Option<(crate::audit::record::RecordKind, crate::config::AuditPolicy)>,
    /// The dossier (hồ sơ) this request is about, for the audit record.
    pub dossier: Option<String>,
    /// The adapter operation that translated the exchange, if any.
    pub adapter: Option<crate::audit::record::Adapter>,
    /// Login sessions the adapter's request step put into the call, dropped if the
    /// upstream refuses it (`translate_stage::response`).
    pub adapter_sessions: Vec<crate::config::SessionUse>,
}

/// A request id: the client's when it is sane, else `<process prefix>-<counter>`,
/// unique within the process and, with a random prefix, across restarts.
pub(crate) fn request_id(h: &http::HeaderMap) -> HeaderValue {
    match h.get(&headers::X_REQUEST_ID) {
        Some(v) if sane_request_id(v.as_bytes()) => v.clone(),
        _ => new_request_id(),
    }
}

/// Whether a client's `X-Request-Id` is kept: 1 to 128 bytes of `[A-Za-z0-9._:-]`.
pub(crate) fn sane_request_id(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
}

/// A new request id, `<process prefix>-<counter>`.
pub(crate) fn new_request_id() -> HeaderValue {
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        format!("{:016x}", h.finish())
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // `{prefix}-{n:x}`, written without the formatting machinery (once per request).
    let mut id = Vec::with_capacity(prefix.len() + 17);
    id.extend_from_slice(prefix.as_bytes());
    id.push(b'-');
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        id.push(b"0123456789abcdef"[((n >> (4 * i)) & 15) as usize]);
    }
    HeaderValue::from_maybe_shared(bytes::Bytes::from(id)).expect("hex is a valid header value")
}

impl Target {
    /// The host for routing: lower case, without port or trailing dot ("" for none).
    pub fn host(&self) -> &str {
        self.host_fields.as_ref().map_or("", |f| f.host.as_str())
    }
}

impl RequestCtx {
    pub fn new(conn: Arc<ConnInfo>, req: &Request<Incoming>) -> Self {
        let path = req.uri().path().to_string();
        let id = request_id(req.headers());
        Self::with(conn, id, req.method().clone(), req.version(), path)
    }

    pub fn with(
        conn: Arc<ConnInfo>,
        request_id: HeaderValue,
        method: Method,
        version: http::Version,
        path: String,
    ) -> Self {
        RequestCtx {
            request_id,
            start: Instant::now(),
            conn,
            method,
            version,
            path,
            route: None,
            route_index: None,
            upstream: None,
            endpoint: None,
            attempts: 0,
            error: None,
            caller: None,
            request_digest: None,
            upstream_us: None,
            kept_request_body: None,
            request_translated: None,
            response_received: None,
            audit_as: None,
            dossier: None,
            adapter: None,
            adapter_sessions: Vec::new(),
        }
    }

    pub fn request_id_str(&self) -> &str {
        self.request_id.to_str().unwrap_or("")
    }
}

/// The client certificate's fingerprint (base64url SHA-256), when the connection
/// presented a verified one.
fn cert_of(ctx: &RequestCtx) -> Option<&str> {
    ctx.conn
        .tls
        .as_ref()
        .and_then(|t| t.client_cert_sha256.as_deref())
}

/// The request path. Always returns a response; errors become JSON bodies in
/// `respond::finish`, and every request is recorded by `observe::record`.
pub async fn handle(
    rt: Arc<Runtime>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<Body> {
    let mut guard = Interrupted {
        rt: &rt,
        ctx: RequestCtx::new(conn, &req),
        armed: true,
    };
    let result = proxy(&rt, &mut guard.ctx, req).await;
    // From here on nothing awaits before the record is in the audit stage's hands.
    guard.armed = false;
    let ctx = &mut guard.ctx;
    let rsp = respond::finish(&rt, ctx, result);
    crate::observe::record(&rt, ctx, &rsp);
    match &rt.audit {
        Some(a) => match audit_stage::record_streamed(a, &rt, ctx, rsp) {
            audit_stage::Streamed::Sent(rsp) => rsp,
            // Fail-closed routes and routes that keep bodies wait for the record: a
            // rarer path, boxed so that its state does not enlarge every request's.
            audit_stage::Streamed::Waits(pending, rsp) => {
                Box::pin(audit_stage::record(a, ctx, *pending, rsp)).await
            }
        },
        None => rsp,
    }
}

/// The status given to a request that ended before its answer: its client went
/// away (hyper drops the request's future when the connection closes), or its
/// connection was closed at the drain timeout. 499 as in nginx's logs; no client
/// ever sees it.
pub const INTERRUPTED_STATUS: u16 = 499;

/// Holds a request's context while its stages run. Dropped armed — the request's
/// future dropped before the stages returned — it still counts the request in the
/// metrics and access log and leaves its audit record, as `interrupted`: the
/// upstream may have acted on a request whose client hung up, and the audit log
/// must show that it was sent.
struct Interrupted<'a> {
    rt: &'a Runtime,
    ctx: RequestCtx,
    armed: bool,
}

impl Drop for Interrupted<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let ctx = &mut self.ctx;
        // A stage that panicked unwinds through here too: that is the gateway's
        // failure (500), not a client that went away.
        let status = if std::thread::panicking() {
            ctx.error = Some(("internal", None));
            500
        } else {
            ctx.error = Some(("interrupted", None));
            INTERRUPTED_STATUS
        };
        crate::observe::record_status(self.rt, ctx, status);
        if let Some(a) = &self.rt.audit {
            audit_stage::record_interrupted(a, ctx, status);
        }
    }
}

async fn proxy(
    rt: &Runtime,
    ctx: &mut RequestCtx,
    req: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    let listener = rt
        .listener(&ctx.conn.listener)
        .ok_or_else(|| GatewayError::internal("listener missing from the running config"))?;
    let (mut parts, body) = req.into_parts();
    let target = intake::check(listener, &ctx.conn.forwarding, &parts)?;
    ctx.path.clone_from(&target.path);
    if let Some(rsp) = local::respond(rt, ctx, &parts, &target).await {
        return rsp;
    }
    if rt.exchange.is_some()
        && (target.path == "/v1/dossiers" || target.path.starts_with("/v1/dossiers/"))
    {
        return Box::pin(local::intake(rt, ctx, &parts, &target, body)).await;
    }
    let (idx, route) = route::select(
        &rt.config.routes,
        &rt.route_order,
        &ctx.conn.listener,
        target.host(),
        &target.path,
        parts.method.as_str(),
    )?;
    ctx.route = Some(rt.route_names[idx].clone());
    ctx.route_index = Some(idx);
    if target.absolute_form && !route.allow_absolute_form {
        return Err(GatewayError::bad_request(
            "absolute_form_not_allowed",
            "absolute-form request targets are not accepted on this route",
        ));
    }
    let upgrade = intake::upgrade_requested(&parts);
    let offered = if upgrade {
        Some(intake::allowed_upgrade(route, &parts.headers)?)
    } else {
        None
    };
    authenticate(rt, ctx, rt.auth.rules[idx].as_ref(), &parts, &target).await?;
    // Response cache (GET routes that enable it): answer from it, or remember what is
    // needed to store the upstream's answer.
    // A GET with a body is neither served from nor stored in the cache: the key does not
    // cover the body, which the upstream may act on.
    let cache = match &rt.route_caches[idx] {
        Some(c) if parts.method == Method::GET && http_body::Body::is_end_stream(&body) => Some((
            c.clone(),
            cached::request_key(
                &parts.headers,
                ctx.caller.as_deref(),
                cert_of(ctx),
                if ctx.conn.tls.is_some() {
                    "https"
                } else {
                    "http"
                },
                // As the upstream is told it (port included): it may build links or
                // redirects from it.
                target.host_fields.as_deref().map_or("", |f| f.raw.as_str()),
            ),
        )),
        _ => None,
    };
    if let Some((c, k)) = &cache {
        if let Some(hit) = c.lookup(&cached::req(&target, k)).await {
            return Ok(cached::respond(rt, ctx, hit));
        }
    }
    let pool = rt.route_pools[idx].clone();
    ctx.upstream = Some(rt.pool_names[idx].clone());
    let body = intake::body(listener, route, &parts, body)?;
    let mut body = intake::replayable(body, pool.cfg.retry.attempts).await?;
    if rt.audit.is_some() {
        if route.audit_bodies {
            let cap = route
                .max_body_bytes
                .unwrap_or(listener.max_body_bytes)
                .min(1 << 20);
            let b = crate::body::collect_capped(body, cap).await.map_err(|_| {
                GatewayError::new(
                    ErrorKind::PayloadTooLarge,
                    "body_too_large",
                    "the request body is larger than this route keeps",
                )
            })?;
            ctx.kept_request_body = Some(b.clone());
            body = Body::full(b);
        }
        body = audit_stage::tap_request(ctx, body);
    }
    if let Some(t) = &route.translate {
        body = Box::pin(translate_stage::request(
            rt,
            ctx,
            t,
            &mut parts.headers,
            body,
        ))
        .await?;
    }
    let client_upgrade = if upgrade {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    let out = forward::prepare(rt, ctx, route, &target, &mut parts, body, upgrade)?;
    let sent = Instant::now();
    let answer = pool.send(out).await;
    ctx.upstream_us = Some(sent.elapsed().as_micros() as u64);
    let answer = answer?;
    ctx.endpoint = Some(answer.endpoint.label.clone());
    ctx.attempts = answer.attempts;
    let mut rsp = answer.response;
    if rsp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        // The upstream may switch only to a protocol the client offered (and the route
        // allows); anything else would tunnel what the route's rules never saw.
        let chosen = headers::upgrade_offers(rsp.headers());
        let fits = match (&offered, &chosen) {
            (Some(o), Some(c)) => c.len() == 1 && o.contains(&c[0]),
            _ => false,
        };
        if !fits {
            return Err(GatewayError::new(
                ErrorKind::BadGateway,
                "bad_upstream_upgrade",
                "the upstream switched to a protocol the request did not offer",
            ));
        }
        if let Some(client) = client_upgrade {
            let idle = listener.idle_timeout;
            forward::tunnel(&ctx.conn, client, &mut rsp, idle);
        }
    }
    if let Some(t) = &route.translate {
        rsp = Box::pin(translate_stage::response(rt, ctx, t, rsp)).await?;
    }
    if let Some((c, k)) = &cache {
        rsp = cached::maybe_store(c, &cached::req(&target, k), rsp).await?;
    }
    Ok(respond::upstream(rt, ctx, rsp, upgrade))
}

pub mod translate_stage {
    //! Payload translation on routes that opt in (`translate`): the body is read under
    //! the route's cap, converted by the streaming engine in `crate::translate`, and
    //! sent on with the `Content-Type` and `Content-Length` of the new body. SOAP faults
    //! from an upstream become JSON errors.
    use super::*;
    use crate::adapter::StepError;
    use crate::config::{AdapterRoute, TranslateCfg, TranslateOp};
    use crate::translate::{self as tr, soap, TranslateError, TranslateErrorKind};

    fn json_opts(t: &TranslateCfg) -> tr::JsonToXmlOptions {
        let mut o = tr::JsonToXmlOptions::default();
        o.root.clone_from(&t.root);
        o.namespaces
            .extend(t.namespaces.iter().map(|(k, v)| (k.clone(), v.clone())));
        o
    }

    fn xml_opts(t: &TranslateCfg) -> tr::XmlToJsonOptions {
        let mut o = tr::XmlToJsonOptions {
            arrays: tr::ArrayPaths::new(t.arrays.iter()),
            ..Default::default()
        };
        o.namespaces
            .extend(t.namespaces.iter().map(|(k, v)| (k.clone(), v.clone())));
        o
    }

    fn error(e: &TranslateError, side: &str) -> GatewayError {
        let kind = match e.kind() {
            TranslateErrorKind::Malformed => ErrorKind::BadRequest,
            TranslateErrorKind::TooLarge => ErrorKind::PayloadTooLarge,
            TranslateErrorKind::Unsupported => ErrorKind::UnsupportedMediaType,
            TranslateErrorKind::Invalid => ErrorKind::Unprocessable,
        };
        if side == "response" {
            // The upstream sent something we cannot translate: its fault, not the client's.
            return GatewayError::new(
                ErrorKind::BadGateway,
                "upstream_untranslatable",
                "the upstream's answer could not be translated",
            )
            .with_detail(e);
        }
        GatewayError::new(
            kind,
            "untranslatable",
            format!("the request body could not be translated: {e}"),
        )
    }

    /// The counterpart's SOAP fault becomes lienthong's JSON error: a sender fault is the
    /// caller's to fix (422), its reason passed on so the caller can; a receiver fault
    /// is the upstream's own (502), and its reason (a stack trace, a database error)
    /// goes to the log only, like every other upstream failure.
    fn fault(f: &soap::SoapFault) -> GatewayError {
        if matches!(f.code_local(), "Client" | "Sender") {
            GatewayError::new(
                ErrorKind::Unprocessable,
                "upstream_fault",
                format!("the upstream refused the request: {}", f.reason),
            )
            .with_detail(format!("SOAP fault {}", f.code))
        } else {
            GatewayError::new(
                ErrorKind::BadGateway,
                "upstream_fault",
                "the upstream failed to process the request",
            )
            .with_detail(format!("SOAP fault {}: {}", f.code, f.reason))
        }
    }

    #[cfg(test)]
    #[test]
    fn a_receiver_fault_keeps_its_reason_out_of_the_client_message() {
        let envelope = |code: &str| {
            format!(
                "<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\">\
                 <soap:Body><soap:Fault><faultcode>soap:{code}</faultcode>\
                 <faultstring>ORA-00942: table or view does not exist</faultstring>\
                 </soap:Fault></soap:Body></soap:Envelope>"
            )
        };
        let fault_of =
            |code: &str| match soap::unwrap(envelope(code).as_bytes(), &Default::default()) {
                Err(soap::UnwrapError::Fault(f)) => fault(&f),
                _ => panic!("not a fault"),
            };
        let server = fault_of("Server");
        assert_eq!(server.kind, ErrorKind::BadGateway);
        assert!(!server.message.contains("ORA-"), "{}", server.message);
        assert!(server
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("ORA-00942")));
        let client = fault_of("Client");
        assert_eq!(client.kind, ErrorKind::Unprocessable);
        assert!(
            client.message.contains("ORA-00942"),
            "the sender's to fix: {}",
            client.message
        );
    }

    fn step_error(e: StepError, side: &str) -> GatewayError {
        match e {
            StepError::Translate(e) => error(&e, side),
            StepError::Fault(f) if side == "response" => fault(&f),
            StepError::Fault(_) => GatewayError::new(
                ErrorKind::Unprocessable,
                "untranslatable",
                "the request body is a SOAP fault",
            ),
            // Map errors name paths, never values.
            StepError::Map(e) if side == "response" => GatewayError::new(
                ErrorKind::BadGateway,
                "upstream_untranslatable",
                "the upstream's answer does not fit the adapter",
            )
            .with_detail(e),
            StepError::Map(e) => GatewayError::new(
                ErrorKind::Unprocessable,
                "unmappable",
                format!("the request does not fit the adapter: {e}"),
            ),
        }
    }

    /// Runs an adapter step: the route's context (sessions logged in first) plus the
    /// built-in names.
    async fn run_step(
        rt: &Runtime,
        ctx: &mut RequestCtx,
        a: &AdapterRoute,
        side: &str,
        input: &[u8],
    ) -> Result<crate::adapter::StepOutput, GatewayError> {
        let step = match side {
            "request" => a.op.request.as_ref(),
            _ => a.op.response.as_ref(),
        }
        .ok_or_else(|| GatewayError::internal("adapter step missing"))?;
        let (mut c, used) = crate::config::adapter_context(&a.context, &rt.pools).await?;
        if side == "request" {
            ctx.adapter_sessions = used;
        }
        if let Ok(id) = ctx.request_id.to_str() {
            c.insert("request_id".into(), id.to_string());
        }
        if let Some(agency) = ctx.caller.as_ref().and_then(|c| c.agency.as_ref()) {
            c.insert("caller_agency".into(), agency.as_str().to_string());
        }
        if let Some(code) = &ctx.dossier {
            c.insert("dossier_code".into(), code.clone());
        }
        ctx.adapter = Some(crate::audit::record::Adapter {
            id: format!("{}/{}", a.system, a.operation),
            version: a.version.clone(),
        });
        step.run(input, &c).map_err(|e| step_error(e, side))
    }

    async fn read(body: Body, cap: u64) -> Result<bytes::Bytes, GatewayError> {
        crate::body::collect_capped(body, cap).await.map_err(|e| {
            if crate::body::is_too_large(e.as_ref()) {
                GatewayError::new(
                    ErrorKind::PayloadTooLarge,
                    "body_too_large",
                    "the body is larger than this route translates",
                )
            } else {
                GatewayError::bad_request("bad_body", "the request body could not be read")
                    .with_detail(e)
            }
        })
    }

    pub async fn request(
        rt: &Runtime,
        ctx: &mut RequestCtx,
        t: &TranslateCfg,
        h: &mut http::HeaderMap,
        body: Body,
    ) -> Result<Body, GatewayError> {
        // The translator reads and writes identity-coded bodies: the upstream is not
        // offered compression it would use on an answer to translate, and a compressed
        // request to translate is refused rather than misread.
        let (translates_request, translates_response) = match &t.adapter {
            Some(a) => (a.op.request.is_some(), a.op.response.is_some()),
            None => (t.request.is_some(), t.response.is_some()),
        };
        if translates_response {
            h.remove(header::ACCEPT_ENCODING);
        }
        if translates_request
            && h.get(header::CONTENT_ENCODING)
                .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
        {
            return Err(GatewayError::new(
                ErrorKind::UnsupportedMediaType,
                "unsupported_encoding",
                "a request body to translate must not be compressed (Content-Encoding)",
            ));
        }
        if let Some(a) = &t.adapter {
            if a.op.request.is_none() {
                return Ok(body);
            }
            let input = read(body, t.max_bytes).await?;
            let out = run_step(rt, ctx, a, "request", &input).await?;
            // The client's SOAPAction described the client's body, not this one: a SOAP
            // 1.2 or non-SOAP output must not carry it on (some stacks dispatch on it).
            h.remove("soapaction");
            if let Some(v) = out
                .soap_action
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok())
            {
                h.insert("soapaction", v);
            }
            if let Ok(v) = HeaderValue::from_str(&out.content_type) {
                h.insert(header::CONTENT_TYPE, v);
            }
            ctx.request_translated = Some(crate::body::sha256(&out.body));
            return Ok(Body::full(out.body));
        }
        let Some(op) = t.request else { return Ok(body) };
        let input = read(body, t.max_bytes).await?;
        if op != TranslateOp::SoapUnwrap {
            h.remove("soapaction");
        }
        let (out, ctype) = match op {
            TranslateOp::JsonToXml => {
                let mut out = Vec::with_capacity(input.len() * 2);
                tr::json_to_xml(&input, &json_opts(t), &mut out)
                    .map_err(|e| error(&e, "request"))?;
                (out, "application/xml; charset=utf-8".to_string())
            }
            TranslateOp::XmlToJson => {
                let mut out = Vec::with_capacity(input.len());
                tr::xml_to_json(&input, &xml_opts(t), &mut out)
                    .map_err(|e| error(&e, "request"))?;
                (out, "application/json".to_string())
            }
            TranslateOp::SoapWrap => {
                let o = soap::SoapWrapOptions {
                    json: json_opts(t),
                    action: t.soap_action.clone(),
                    ..Default::default()
                };
                let v = if t.soap_12 {
                    soap::SoapVersion::V12
                } else {
                    soap::SoapVersion::V11
                };
                let r = soap::wrap(&input, v, &o).map_err(|e| error(&e, "request"))?;
                if let Some(a) = r
                    .soap_action
                    .as_deref()
                    .and_then(|a| HeaderValue::from_str(a).ok())
                {
                    h.insert("soapaction", a);
                }
                (r.body, r.content_type)
            }
            TranslateOp::SoapUnwrap => return Ok(Body::full(input)),
        };
        if let Ok(v) = HeaderValue::from_str(&ctype) {
            h.insert(header::CONTENT_TYPE, v);
        }
        ctx.request_translated = Some(crate::body::sha256(&out));
        Ok(Body::full(out))
    }

    fn drop_sessions(ctx: &mut RequestCtx) {
        for (login, used) in ctx.adapter_sessions.drain(..) {
            login.invalidate(&used);
        }
    }

    pub async fn response(
        rt: &Runtime,
        ctx: &mut RequestCtx,
        t: &TranslateCfg,
        rsp: Response<Body>,
    ) -> Result<Response<Body>, GatewayError> {
        let adapter_step = t.adapter.as_ref().filter(|a| a.op.response.is_some());
        // A refused call may be a stale login session: the next call logs in again (as
        // deliveries do). Refused: 401/403, or an answer the operation maps to `ok: false`.
        if matches!(rsp.status().as_u16(), 401 | 403) {
            drop_sessions(ctx);
        }
        if t.response.is_none() && adapter_step.is_none() {
            return Ok(rsp);
        }
        let (mut parts, body) = rsp.into_parts();
        let input = read(body, t.max_bytes).await.map_err(|e| {
            GatewayError::new(
                ErrorKind::BadGateway,
                "upstream_untranslatable",
                "the upstream's answer is too large to translate",
            )
            .with_detail(e)
        })?;
        ctx.response_received = Some(crate::body::sha256(&input));
        // Nothing to translate. But an adapter's response step whose answer is missing
        // (an empty 200 where the operation defines what comes back) is the upstream's
        // failure: the step runs on nothing, and fails, rather than pass an empty 200 on.
        let bodiless = matches!(parts.status.as_u16(), 204 | 304) || ctx.method == Method::HEAD;
        if input.is_empty() && (adapter_step.is_none() || bodiless) {
            // A HEAD answer describes what GET would return: the translated body, whose
            // type is known and whose length is not.
            if ctx.method == Method::HEAD && parts.status.is_success() {
                let translated = match (adapter_step, t.response) {
                    (Some(a), _) => a.op.response.as_ref().map(|s| s.output.content_type()),
                    (None, Some(TranslateOp::XmlToJson | TranslateOp::SoapUnwrap)) => {
                        Some("application/json")
                    }
                    (None, Some(TranslateOp::JsonToXml)) => Some("application/xml; charset=utf-8"),
                    (None, _) => None,
                };
                if let Some(ctype) = translated {
                    parts
                        .headers
                        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
                    parts.headers.remove(header::CONTENT_LENGTH);
                }
            }
            return Ok(Response::from_parts(parts, Body::empty()));
        }
        if let Some(a) = adapter_step {
            let out = run_step(rt, ctx, a, "response", &input).await?;
            if !ctx.adapter_sessions.is_empty()
                && serde_json::from_slice::<serde_json::Value>(&out.body)
                    .is_ok_and(|v| v.get("ok") == Some(&serde_json::Value::Bool(false)))
            {
                drop_sessions(ctx);
            }
            if let Ok(v) = HeaderValue::from_str(&out.content_type) {
                parts.headers.insert(header::CONTENT_TYPE, v);
            }
            parts.headers.remove(header::CONTENT_LENGTH);
            return Ok(Response::from_parts(parts, Body::full(out.body)));
        }
        let Some(op) = t.response else {
            return Ok(Response::from_parts(parts, Body::full(input)));
        };
        let (out, ctype) = match op {
            TranslateOp::XmlToJson => {
                let mut out = Vec::with_capacity(input.len());
                tr::xml_to_json(&input, &xml_opts(t), &mut out)
                    .map_err(|e| error(&e, "response"))?;
                (out, "application/json")
            }
            TranslateOp::JsonToXml => {
                let mut out = Vec::with_capacity(input.len() * 2);
                tr::json_to_xml(&input, &json_opts(t), &mut out)
                    .map_err(|e| error(&e, "response"))?;
                (out, "application/xml; charset=utf-8")
            }
            TranslateOp::SoapUnwrap => match soap::unwrap(&input, &xml_opts(t)) {
                Ok(m) => (m.json, "application/json"),
                Err(soap::UnwrapError::Fault(f)) => return Err(fault(&f)),
                Err(soap::UnwrapError::Translate(e)) => return Err(error(&e, "response")),
            },
            TranslateOp::SoapWrap => return Ok(Response::from_parts(parts, Body::full(input))),
        };
        parts
            .headers
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
        parts.headers.remove(header::CONTENT_LENGTH);
        Ok(Response::from_parts(parts, Body::full(out)))
    }
}

pub mod audit_stage {
    //! One audit record per request, refused ones included. Fail-open routes record
    //! when the response body has been sent (so the record carries its digest and
    //! size) and never wait on disk; fail-closed routes read the response, wait until
    //! the record is durable, and answer 503 instead if it cannot be.
    use super::*;
    use crate::audit::record::{self, RecordKind};
    use crate::audit::Auditor;
    use crate::body::{sha256, Tap};
    use crate::config::AuditPolicy;
    use crate::store::audit::IndexColumns;
    use std::sync::Mutex;

    pub type DigestSlot = Arc<Mutex<Option<(Option<[u8; 32]>, u64)>>>;

    /// Records the digest of a body a stage read whole (intake).
    pub fn note_request(ctx: &mut RequestCtx, bytes: &[u8]) {
        ctx.request_digest = Some(Arc::new(Mutex::new(Some((
            Some(sha256(bytes)),
            bytes.len() as u64,
        )))));
    }

    /// Hashes the request body as it is read (by the upstream, usually). A
    /// request without a body has no digest (its record says `bytes_in: 0`).
    pub fn tap_request(ctx: &mut RequestCtx, body: Body) -> Body {
        if matches!(body, Body::Empty) {
            // Nothing to hash: no slot is the same record (`bytes_in: 0`, no digest).
            ctx.request_digest = None;
            return body;
        }
        let slot: DigestSlot = Arc::new(Mutex::new(None));
        ctx.request_digest = Some(slot.clone());
        body.with_tap(Tap::new(move |d, n| {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((d, n));
        }))
    }

    fn kind(ctx: &RequestCtx, status: u16) -> RecordKind {
        if ctx.error.is_some() && (400..500).contains(&status) && status != INTERRUPTED_STATUS {
            return RecordKind::Rejected;
        }
        // Stages that are not plain proxying (lookups, intake) say what they are.
        ctx.audit_as.map_or(RecordKind::Proxy, |(k, _)| k)
    }

    fn text(b: &[u8]) -> String {
        match std::str::from_utf8(b) {
            Ok(s) => s.to_string(),
            Err(_) => {
                use base64::Engine;
                format!(
                    "base64:{}",
                    base64::engine::general_purpose::STANDARD.encode(b)
                )
            }
        }
    }

    /// What a request's record needs from its context, taken (moved out of it) when
    /// the response headers are known: the context is not used after the audit
    /// stage but by [`record()`], which needs only its request id and kept body.
    /// Digests stay raw: the record is serialised straight from this (see
    /// [`record::RecordView`]) once the response body has gone out, without an
    /// [`AuditRecord`] of owned copies in between. What plain proxying never has
    /// sits in a box of its own, so the common draft stays small.
    struct Draft {
        time_ms: u64,
        kind: RecordKind,
        request_id: http::HeaderValue,
        listener: Arc<str>,
        caller: Option<Arc<crate::auth::caller::Caller>>,
        route: Option<Arc<str>>,
        upstream: Option<Arc<str>>,
        endpoint: Option<Arc<str>>,
        method: Method,
        path: record::RecordPath,
        status: u16,
        error: Option<&'static str>,
        upstream_us: Option<u64>,
        start: std::time::Instant,
        request_slot: Option<DigestSlot>,
        rare: Option<Box<Rare>>,
    }

    /// The parts of a draft that a plain proxied request does not have.
    struct Rare {
        cert_s256: Option<String>,
        dossier: Option<String>,
        adapter: Option<record::Adapter>,
        request_translated: Option<[u8; 32]>,
        response_received: Option<[u8; 32]>,
    }

    /// What is known once the response body has been sent (or read).
    struct Outcome<'a> {
        sent: Option<[u8; 32]>,
        bytes_out: u64,
        body: Option<(Option<&'a str>, Option<&'a str>)>,
    }

    impl Draft {
        fn new(ctx: &mut RequestCtx, status: u16) -> Self {
            let cert_s256 = ctx
                .conn
                .tls
                .as_ref()
                .and_then(|t| t.client_cert_sha256.clone());
            let rare = Rare {
                cert_s256,
                dossier: ctx.dossier.take(),
                adapter: ctx.adapter.take(),
                request_translated: ctx.request_translated,
                response_received: ctx.response_received,
            };
            let any = rare.cert_s256.is_some()
                || rare.dossier.is_some()
                || rare.adapter.is_some()
                || rare.request_translated.is_some()
                || rare.response_received.is_some();
            Draft {
                // When the request arrived, not when its answer came.
                time_ms: record::epoch_ms(record::wall_time_of(ctx.start)),
                kind: kind(ctx, status),
                request_id: ctx.request_id.clone(),
                listener: ctx.conn.listener.clone(),
                caller: ctx.caller.take(),
                route: ctx.route.take(),
                upstream: ctx.upstream.take(),
                endpoint: ctx.endpoint.take(),
                method: std::mem::take(&mut ctx.method),
                path: record::RecordPath::from_owned(std::mem::take(&mut ctx.path)),
                status,
                error: ctx.error.as_ref().map(|(code, _)| *code),
                upstream_us: ctx.upstream_us,
                start: ctx.start,
                request_slot: ctx.request_digest.take(),
                rare: any.then(|| Box::new(rare)),
            }
        }

        /// Write the record's JSON into `json` (the writer's scratch buffer) and return
        /// its index columns. The body sent to the client is the translated one when a
        /// translation ran; the upstream's own answer then goes in `response_sha256`.
        fn finish(&self, out: &Outcome<'_>, json: &mut Vec<u8>) -> IndexColumns {
            let request = self
                .request_slot
                .as_ref()
                .and_then(|s| *s.lock().unwrap_or_else(|e| e.into_inner()));
            let (request_sha256, bytes_in) = match &request {
                Some((d, n)) => (d.as_ref(), *n),
                None => (None, 0),
            };
            static NONE: Rare = Rare {
                cert_s256: None,
                dossier: None,
                adapter: None,
                request_translated: None,
                response_received: None,
            };
            let rare = self.rare.as_deref().unwrap_or(&NONE);
            let (response, response_translated) = match &rare.response_received {
                Some(raw) => (Some(raw), out.sent.as_ref()),
                None => (out.sent.as_ref(), None),
            };
            let view = record::RecordView {
                time: record::TimeRef::EpochMs(self.time_ms),
                request_id: self.request_id.to_str().unwrap_or_default(),
                kind: self.kind,
                listener: &self.listener,
                caller: match (&self.caller, &rare.cert_s256) {
                    (Some(c), cert) => Some(record::CallerView {
                        agency: c.agency.as_ref().map_or("", |a| a.as_str()),
                        subject: Some(&c.subject),
                        cert_s256: cert.as_deref(),
                    }),
                    (None, Some(cert)) => Some(record::CallerView {
                        agency: "",
                        subject: None,
                        cert_s256: Some(cert),
                    }),
                    (None, None) => None,
                },
                route: self.route.as_deref(),
                upstream: self.upstream.as_deref(),
                endpoint: self.endpoint.as_deref(),
                method: Some(self.method.as_str()),
                path: Some(&self.path),
                status: Some(self.status),
                error: self.error.map(|k| (k, None)),
                latency_us: self.start.elapsed().as_micros() as u64,
                upstream_latency_us: self.upstream_us,
                bytes_in,
                bytes_out: out.bytes_out,
                request_sha256: request_sha256.map(record::DigestRef::Raw),
                request_translated_sha256: rare
                    .request_translated
                    .as_ref()
                    .map(record::DigestRef::Raw),
                response_sha256: response.map(record::DigestRef::Raw),
                response_translated_sha256: response_translated.map(record::DigestRef::Raw),
                dossier: rare.dossier.as_deref(),
                adapter: rare.adapter.as_ref(),
                detail: None,
                body: out.body,
            };
            view.write_json(json);
            IndexColumns::of_view(&view, self.route.clone())
        }
    }

    /// What [`record()`] needs to finish a request's record.
    pub struct Pending {
        draft: Draft,
        policy: AuditPolicy,
        keep_bodies: bool,
    }

    /// What [`record_streamed`] did with a response.
    pub enum Streamed {
        /// Sent on, its record to follow when its body has gone out.
        Sent(Response<Body>),
        /// Handed back: [`record()`] finishes the record and the response.
        Waits(Box<Pending>, Response<Body>),
    }

    /// The record of a fail-open route that keeps no bodies is submitted when the
    /// response body has gone out (a tap on it): the response is returned at once.
    /// Other routes get their response back with what [`record()`] needs.
    pub fn record_streamed(
        a: &Arc<Auditor>,
        rt: &Runtime,
        ctx: &mut RequestCtx,
        rsp: Response<Body>,
    ) -> Streamed {
        let status = rsp.status().as_u16();
        let route = ctx.route_index.map(|i| &rt.config.routes[i]);
        let policy = match ctx.audit_as {
            Some((_, p)) => p,
            None => route.map_or(AuditPolicy::FailOpen, |r| r.audit),
        };
        let keep_bodies = route.is_some_and(|r| r.audit_bodies);
        let draft = Draft::new(ctx, status);
        if policy != AuditPolicy::FailOpen || keep_bodies {
            let pending = Pending {
                draft,
                policy,
                keep_bodies,
            };
            return Streamed::Waits(Box::new(pending), rsp);
        }
        let (parts, body) = rsp.into_parts();
        let body = body.with_tap(submit_when_sent(a, draft));
        Streamed::Sent(Response::from_parts(parts, body))
    }

    /// The tap that submits a fail-open record once the response body has gone out
    /// (its digest and size), or as cut short when it is dropped before its end. The
    /// closure holds the draft: one allocation (the tap's) carries both.
    fn submit_when_sent(a: &Arc<Auditor>, draft: Draft) -> Tap {
        let w = a.clone();
        Tap::new(move |d, n| {
            let out = Outcome {
                sent: d,
                bytes_out: n,
                body: None,
            };
            if w.writer
                .submit_nowait_with(|buf| draft.finish(&out, buf))
                .is_err()
            {
                metrics::counter!("lienthong_audit_dropped_total").increment(1);
            }
        })
    }

    /// Whether the fast path (`pipeline::fast`) can record a request to `route`: its
    /// record is the fail-open one that keeps no bodies.
    pub fn fast_path_records(route: &crate::config::RouteConfig) -> bool {
        route.audit == AuditPolicy::FailOpen && !route.audit_bodies
    }

    /// [`record_streamed`] for the fast path, which relays a response body itself: the
    /// tap it feeds with the body as it writes it out (and finishes at its end, or drops
    /// where hyper would not have read it: no body, or a cut-off one).
    pub fn fast_path_tap(a: &Arc<Auditor>, ctx: &mut RequestCtx, status: u16) -> Tap {
        submit_when_sent(a, Draft::new(ctx, status))
    }

    /// The record of a request whose stages never returned (see `Interrupted`):
    /// what is known of it so far, with no response.
    pub fn record_interrupted(a: &Arc<Auditor>, ctx: &mut RequestCtx, status: u16) {
        let draft = Draft::new(ctx, status);
        submit_unanswered(a, &draft);
    }

    /// Submits a draft whose response never went out (nothing sent, no digest).
    fn submit_unanswered(a: &Arc<Auditor>, draft: &Draft) {
        let out = Outcome {
            sent: None,
            bytes_out: 0,
            body: None,
        };
        if a.writer
            .submit_nowait_with(|buf| draft.finish(&out, buf))
            .is_err()
        {
            metrics::counter!("lienthong_audit_dropped_total").increment(1);
        }
    }

    /// A fail-closed or body-keeping request's draft while [`record()`] reads the
    /// response and waits on the log: if the request's future is dropped there (its
    /// client went away), the draft is submitted as interrupted instead of lost. The
    /// metrics and access log have already counted the upstream's status by then (they
    /// run before the audit stage, which takes the context's names): they say what
    /// the upstream answered, the audit record that the client never got it.
    struct Held<'a> {
        a: &'a Arc<Auditor>,
        draft: Option<Draft>,
    }

    impl Drop for Held<'_> {
        fn drop(&mut self) {
            if let Some(mut d) = self.draft.take() {
                d.status = INTERRUPTED_STATUS;
                d.error = Some("interrupted");
                submit_unanswered(self.a, &d);
            }
        }
    }

    /// Fail-closed routes (and routes that keep bodies): the response is read so
    /// the record can carry it, and a fail-closed one is sent only once its record
    /// is durable.
    pub async fn record(
        a: &Arc<Auditor>,
        ctx: &RequestCtx,
        pending: Pending,
        rsp: Response<Body>,
    ) -> Response<Body> {
        let Pending {
            draft,
            policy,
            keep_bodies,
        } = pending;
        let (parts, body) = rsp.into_parts();
        let mut held = Held {
            a,
            draft: Some(draft),
        };
        let read = crate::body::collect_capped(body, 16 << 20).await;
        let mut draft = held.draft.take().expect("held until the body is read");
        let bytes = match read {
            Ok(b) => b,
            Err(e) => {
                let ge = GatewayError::new(
                    ErrorKind::BadGateway,
                    "upstream_error",
                    "the upstream failed to answer",
                )
                .with_detail(e);
                draft.status = 502;
                draft.error = Some(ge.code);
                let out = Outcome {
                    sent: None,
                    bytes_out: 0,
                    body: None,
                };
                let _ = a.writer.submit_nowait_with(|buf| draft.finish(&out, buf));
                return respond::error_response(&ge, ctx.request_id_str());
            }
        };
        let kept = keep_bodies.then(|| {
            (
                ctx.kept_request_body.as_deref().map(text),
                Some(text(&bytes)),
            )
        });
        let out = Outcome {
            sent: Some(sha256(&bytes)),
            bytes_out: bytes.len() as u64,
            body: kept.as_ref().map(|(q, r)| (q.as_deref(), r.as_deref())),
        };
        if policy == AuditPolicy::FailOpen {
            if a.writer
                .submit_nowait_with(|buf| draft.finish(&out, buf))
                .is_err()
            {
                metrics::counter!("lienthong_audit_dropped_total").increment(1);
            }
            return Response::from_parts(parts, Body::full(bytes));
        }
        let ticket = a.writer.submit_with(|buf| draft.finish(&out, buf));
        let rsp = Response::from_parts(parts, Body::full(bytes));
        let durable = match ticket {
            Ok(ticket) => ticket.durable().await.map(|_| ()),
            Err(e) => Err(e),
        };
        match durable {
            Ok(()) => rsp,
            Err(e) => {
                metrics::counter!("lienthong_audit_refused_total").increment(1);
                let ge = GatewayError::unavailable(
                    "audit_unavailable",
                    "the exchange could not be recorded in the audit log; try again later",
                    5,
                )
                .with_detail(e);
                tracing::error!(request_id = ctx.request_id_str(), error = ?ge.detail, "fail-closed route refused: audit record not durable");
                respond::error_response(&ge, ctx.request_id_str())
            }
        }
    }
}

pub mod cached {
    //! The response-cache stage of GET proxy routes that enable `cache`.
    use super::*;
    use crate::cache::lookup::response::{CacheRequest, CachedResponse, ResponseCache};
    use bytes::Bytes;

    pub type Pairs = Vec<(String, Bytes)>;

    pub fn pairs(h: &http::HeaderMap) -> Pairs {
        h.iter()
            .map(|(k, v)| (k.as_str().to_string(), Bytes::copy_from_slice(v.as_bytes())))
            .collect()
    }

    /// What keys a request's cache entry besides its method and target.
    pub struct Keyed {
        pairs: Pairs,
        /// Every fact about the caller the upstream is told (identity, agency, roles,
        /// scopes, certificate), so that no two callers the upstream could tell apart
        /// share an entry.
        who: Option<String>,
        origin: String,
    }

    /// The request's headers, caller (its token's claims and its client certificate,
    /// both of which the upstream is told) and origin (`scheme://host`, the host as the
    /// client wrote it, lower case) as cache keys take them.
    pub fn request_key(
        h: &http::HeaderMap,
        caller: Option<&crate::auth::caller::Caller>,
        cert: Option<&str>,
        scheme: &str,
        host: &str,
    ) -> Keyed {
        // A certificate alone names the connection, not whoever is behind it: with
        // credentials the gateway did not verify (cookies, an unchecked token) the
        // request stays an unknown caller's, which per-caller routes do not cache.
        let unverified_creds =
            h.contains_key(header::AUTHORIZATION) || h.contains_key(header::COOKIE);
        let cert = cert.filter(|_| caller.is_some() || !unverified_creds);
        let who = (caller.is_some() || cert.is_some()).then(|| {
            // Length-prefixed parts: no choice of values makes two callers one key.
            let mut k = String::new();
            let mut part = |v: &str| {
                k.push_str(&v.len().to_string());
                k.push(':');
                k.push_str(v);
            };
            part(cert.unwrap_or(""));
            let Some(c) = caller else {
                return k;
            };
            part(&c.issuer);
            part(&c.subject);
            part(c.agency.as_ref().map(|a| a.as_str()).unwrap_or(""));
            let (mut roles, mut scopes) = (c.roles.clone(), c.scopes.clone());
            roles.sort();
            scopes.sort();
            part(&roles.len().to_string());
            roles.iter().for_each(|r| part(r));
            part(&scopes.len().to_string());
            scopes.iter().for_each(|r| part(r));
            part(c.cnf_x5t_s256.as_deref().unwrap_or(""));
            k
        });
        Keyed {
            pairs: pairs(h),
            who,
            origin: format!("{scheme}://{}", host.to_ascii_lowercase()),
        }
    }

    pub fn req<'a>(t: &'a Target, k: &'a Keyed) -> CacheRequest<'a> {
        CacheRequest {
            method: "GET",
            origin: &k.origin,
            path: &t.path,
            query: t.query.as_deref(),
            headers: &k.pairs,
            caller: k.who.as_deref(),
        }
    }

    /// Whether an answer's `Vary` names a field the gateway sets or replaces on the way
    /// up (forwarding fields, its own `x-lienthong-*`, the request id): entries are
    /// matched on the client's fields, which are not what the upstream varied on.
    fn varies_on_gateway_fields(h: &http::HeaderMap) -> bool {
        h.get_all(header::VARY).iter().any(|v| {
            v.to_str().map_or(true, |v| {
                v.split(',').map(str::trim).any(|f| {
                    let f = f.to_ascii_lowercase();
                    f.starts_with("x-lienthong-")
                        || f.starts_with("x-forwarded-")
                        || matches!(f.as_str(), "forwarded" | "x-request-id" | "via")
                })
            })
        })
    }

    pub fn respond(rt: &Runtime, ctx: &mut RequestCtx, hit: CachedResponse) -> Response<Body> {
        let mut rsp = Response::new(Body::full(hit.body));
        *rsp.status_mut() = http::StatusCode::from_u16(hit.status).unwrap_or(http::StatusCode::OK);
        let h = rsp.headers_mut();
        for (k, v) in &hit.headers {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_bytes(v),
            ) {
                h.append(k, v);
            }
        }
        h.remove(header::CONTENT_LENGTH);
        h.insert(header::AGE, HeaderValue::from(hit.age.as_secs()));
        h.insert("x-lienthong-cache", HeaderValue::from_static("hit"));
        ctx.endpoint = Some("cache".into());
        respond::upstream(rt, ctx, rsp, false)
    }

    /// Stores a storable answer: bodies with a declared length within the cap are
    /// read (they would be forwarded whole anyway) and sent on from memory.
    pub async fn maybe_store(
        c: &ResponseCache,
        req: &CacheRequest<'_>,
        rsp: Response<Body>,
    ) -> Result<Response<Body>, GatewayError> {
        let status = rsp.status().as_u16();
        let rpairs = pairs(rsp.headers());
        let len = rsp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let fits = len.is_some_and(|n| n <= c.policy().max_entry_bytes as u64);
        if !fits
            || varies_on_gateway_fields(rsp.headers())
            || c.storable(req, status, &rpairs, &Bytes::new()).is_err()
        {
            return Ok(rsp);
        }
        let (parts, body) = rsp.into_parts();
        let bytes = crate::body::collect_capped(body, len.unwrap_or(0))
            .await
            .map_err(|e| {
                GatewayError::new(
                    ErrorKind::BadGateway,
                    "upstream_error",
                    "the upstream failed to answer",
                )
                .with_detail(e)
            })?;
        c.store(req, status, &rpairs, &bytes).await;
        let mut rsp = Response::from_parts(parts, Body::full(bytes));
        rsp.headers_mut()
            .insert("x-lienthong-cache", HeaderValue::from_static("miss"));
        Ok(rsp)
    }
}

/// authn + authz against one access rule (a route's, a lookup's, the intake's): the
/// verified caller goes on the context; `None` as the rule denies everyone.
async fn authenticate(
    rt: &Runtime,
    ctx: &mut RequestCtx,
    rule: Option<&crate::auth::rules::AccessRule>,
    parts: &http::request::Parts,
    target: &Target,
) -> Result<(), GatewayError> {
    let cert = ctx
        .conn
        .tls
        .as_ref()
        .and_then(|t| t.client_cert_sha256.as_deref());
    ctx.caller = rt
        .auth
        .check_rule(rule, &parts.headers, target.query.as_deref(), cert)
        .await?;
    Ok(())
}

/// What intake learned about the request target.
pub struct Target {
    /// What the Host (or `:authority`) says; None when the request has none.
    pub host_fields: Option<Arc<headers::HostFields>>,
    pub path: String,
    pub query: Option<String>,
    pub absolute_form: bool,
}

pub mod intake {
    //! Checks on the request head before routing, and the body cap.
    use super::*;

    pub fn check(
        l: &ListenerConfig,
        fwd: &headers::Forwarding,
        parts: &http::request::Parts,
    ) -> Result<Target, GatewayError> {
        if parts.method == Method::CONNECT {
            return Err(GatewayError::method_not_allowed(
                "connect_not_allowed",
                "CONNECT tunnels are not offered by this gateway",
                "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS",
            ));
        }
        // Methods are case-sensitive: `delete` is not `DELETE` to a route's method list,
        // but upstreams that compare without case would run it as one.
        let m = &parts.method;
        let standard = matches!(
            *m,
            Method::GET | Method::POST | Method::PUT | Method::DELETE | Method::HEAD
        ) || matches!(*m, Method::OPTIONS | Method::PATCH | Method::TRACE);
        if !standard && m.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(GatewayError::bad_request(
                "bad_method",
                "method names are case-sensitive; this gateway takes upper-case ones only",
            ));
        }
        // hyper's parser enforces a higher limit as a backstop (100 fields, or twice
        // `max_headers` from 100 up: `server::parser_max_headers`; its refusals have no
        // body); within that margin the refusal is ours and carries the JSON contract.
        if parts.headers.len() > l.max_headers {
            return Err(GatewayError::new(
                ErrorKind::HeadersTooLarge,
                "too_many_headers",
                format!("the request has more than {} header fields", l.max_headers),
            ));
        }
        let head_bytes: usize = parts
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
            + parts.uri.path_and_query().map_or(0, |p| p.as_str().len());
        if head_bytes > l.max_header_bytes {
            return Err(GatewayError::new(
                ErrorKind::HeadersTooLarge,
                "headers_too_large",
                format!(
                    "the request head is larger than {} bytes",
                    l.max_header_bytes
                ),
            ));
        }
        let uri = &parts.uri;
        let uri_len = uri.path_and_query().map_or(0, |p| p.as_str().len());
        if uri_len > l.max_uri_bytes {
            return Err(GatewayError::new(
                ErrorKind::UriTooLong,
                "uri_too_long",
                format!(
                    "the request target is longer than {} bytes",
                    l.max_uri_bytes
                ),
            ));
        }
        let is_h1 = parts.version < http::Version::HTTP_2;
        // In HTTP/1 a scheme in the URI means absolute-form; HTTP/2 always carries one.
        let absolute_form = is_h1 && uri.scheme().is_some();
        if uri.path() == "*" || (is_h1 && uri.scheme().is_none() && !uri.path().starts_with('/')) {
            return Err(GatewayError::bad_request(
                "bad_target",
                "the request target must be a path",
            ));
        }
        let mut hosts = parts.headers.get_all(header::HOST).iter();
        let host_header = hosts.next();
        if hosts.next().is_some() {
            return Err(GatewayError::bad_request(
                "bad_host",
                "more than one Host header",
            ));
        }
        let raw_host: Option<&str> = if absolute_form || !is_h1 {
            uri.authority()
                .map(http::uri::Authority::as_str)
                .or_else(|| host_header.and_then(|h| h.to_str().ok()))
        } else {
            match host_header {
                None if parts.version == http::Version::HTTP_11 => {
                    return Err(GatewayError::bad_request(
                        "bad_host",
                        "the Host header is required",
                    ))
                }
                None => None,
                Some(h) => Some(h.to_str().map_err(|_| {
                    GatewayError::bad_request("bad_host", "the Host header is not valid")
                })?),
            }
        };
        let host_fields = match raw_host {
            Some(h) => Some(fwd.host(h).ok_or_else(|| {
                GatewayError::bad_request("bad_host", "the Host header is not valid")
            })?),
            None => None,
        };
        let path = normalize::normalize_path(uri.path())
            .map_err(|e| GatewayError::bad_request("bad_path", e.to_string()))?;
        Ok(Target {
            host_fields,
            path,
            query: uri.query().map(str::to_string),
            absolute_form,
        })
    }

    /// Small bodies are read into memory when retries are configured, so that a
    /// failed attempt can be sent again (a connect failure is safe to retry for any
    /// method, but only if the body still exists). Larger bodies stream and are not retried.
    pub async fn replayable(body: Body, attempts: u32) -> Result<Body, GatewayError> {
        const REPLAY_BUFFER: u64 = 64 * 1024;
        if attempts <= 1 || body.replayable().is_some() {
            return Ok(body);
        }
        match http_body::Body::size_hint(&body).exact() {
            Some(n) if n <= REPLAY_BUFFER => match crate::body::collect_capped(body, n).await {
                Ok(b) => Ok(Body::full(b)),
                Err(e) if crate::body::is_too_large(e.as_ref()) => Err(GatewayError::new(
                    ErrorKind::PayloadTooLarge,
                    "body_too_large",
                    "the request body is larger than this route accepts",
                )),
                Err(e) => Err(GatewayError::bad_request(
                    "bad_body",
                    "the request body could not be read",
                )
                .with_detail(e)),
            },
            _ => Ok(body),
        }
    }

    pub fn upgrade_requested(parts: &http::request::Parts) -> bool {
        parts.version == http::Version::HTTP_11 && parts.headers.contains_key(header::UPGRADE)
    }

    /// Checks an `Upgrade` against the route: upgrades allowed at all, and every
    /// protocol offered in the route's `upgrade_protocols` (the upstream may pick any
    /// of them). Returns the protocols offered.
    pub fn allowed_upgrade(
        route: &RouteConfig,
        h: &http::HeaderMap,
    ) -> Result<Vec<String>, GatewayError> {
        if !route.allow_upgrade {
            return Err(GatewayError::bad_request(
                "upgrade_not_allowed",
                "protocol upgrades are not accepted on this route",
            ));
        }
        let offers = super::headers::upgrade_offers(h).ok_or_else(|| {
            GatewayError::bad_request(
                "bad_upgrade",
                "the Upgrade field is not a list of protocol names",
            )
        })?;
        if offers.is_empty() {
            return Err(GatewayError::bad_request(
                "bad_upgrade",
                "the Upgrade field names no protocol",
            ));
        }
        match offers.iter().find(|p| !route.upgrade_protocols.contains(p)) {
            Some(p) => Err(GatewayError::bad_request(
                "upgrade_not_allowed",
                format!("an upgrade to {p:?} is not accepted on this route"),
            )),
            None => Ok(offers),
        }
    }

    /// Applies the body cap: a declared length over it is refused before anything is
    /// read; a streamed body is cut when it passes the cap.
    pub fn body(
        l: &ListenerConfig,
        route: &RouteConfig,
        parts: &http::request::Parts,
        body: Incoming,
    ) -> Result<Body, GatewayError> {
        let cap = route.max_body_bytes.unwrap_or(l.max_body_bytes);
        let too_large = || {
            GatewayError::new(
                ErrorKind::PayloadTooLarge,
                "body_too_large",
                format!("the request body is larger than {cap} bytes"),
            )
            .with_detail(BodyTooLarge { limit: cap })
        };
        if let Some(len) = parts.headers.get(header::CONTENT_LENGTH) {
            let n: u64 = len
                .to_str()
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    GatewayError::bad_request("bad_length", "Content-Length is not valid")
                })?;
            if n > cap {
                return Err(too_large());
            }
            if n == 0 {
                return Ok(Body::empty());
            }
        } else if http_body::Body::is_end_stream(&body) {
            return Ok(Body::empty());
        }
        Ok(Body::stream(body, Some(cap)))
    }
}

pub mod local {
    //! What the gateway answers itself on its public listeners.
    use super::*;

    /// Lookups (`/lookups/NAME[/KEY]`) and lienthong's own JWKS; None for anything
    /// else, which goes on to routing.
    pub async fn respond(
        rt: &Runtime,
        ctx: &mut RequestCtx,
        parts: &http::request::Parts,
        target: &Target,
    ) -> Option<Result<Response<Body>, GatewayError>> {
        if let Some((name, key)) = crate::cache::serve::parse_path(&target.path) {
            let l = rt.lookups.get(name)?;
            // Boxed: a lookup's state would otherwise enlarge every request's future.
            return Some(Box::pin(lookup(rt, ctx, parts, target, l, key)).await);
        }
        jwks(rt, parts, target).map(Ok)
    }

    /// The intake API: `POST /v1/dossiers`, `GET /v1/dossiers/{code}`,
    /// `POST /v1/dossiers/{code}/events`, `POST /v1/dossiers/{code}/evaluation`.
    /// Needs the whole body (under the listener's cap), like every stage that stores it.
    pub async fn intake(
        rt: &Runtime,
        ctx: &mut RequestCtx,
        parts: &http::request::Parts,
        target: &Target,
        body: Incoming,
    ) -> Result<Response<Body>, GatewayError> {
        let x = rt
            .exchange
            .as_ref()
            .ok_or_else(|| GatewayError::internal("intake without an exchange"))?;
        let rest = target.path.strip_prefix("/v1/dossiers").unwrap_or("");
        intake_inner(rt, ctx, parts, target, body, x, rest).await
    }

    /// With `[exchange] catalogue`, the procedure code must be known to that lookup. When the
    /// catalogue cannot answer (source down, nothing cached) the dossier is accepted and the
    /// unchecked intake counted: refusing would lose it, and the national side checks again.
    async fn check_catalogue(
        rt: &Runtime,
        x: &crate::exchange::Exchange,
        d: &crate::exchange::dossier::Dossier,
        at: &str,
    ) -> Result<(), GatewayError> {
        use crate::cache::lookup::LookupError;
        let Some(name) = &x.cfg.catalogue else {
            return Ok(());
        };
        let Some(l) = rt.lookups.get(name) else {
            return Ok(());
        };
        match l.by_key.get(Some(&d.procedure_code)).await {
            Ok(_) => Ok(()),
            Err(LookupError::NotFound { .. } | LookupError::BadKey { .. }) => {
                Err(GatewayError::new(
                    ErrorKind::Unprocessable,
                    "invalid_dossier",
                    format!("invalid: {at}procedure_code: not in the procedure catalogue ({name})"),
                ))
            }
            Err(e) => {
                tracing::warn!(catalogue = %name, error = %e, "procedure catalogue unavailable; dossier accepted unchecked");
                metrics::counter!("lienthong_intake_catalogue_unchecked_total").increment(1);
                Ok(())
            }
        }
    }

    /// `?format=NAME` of an intake request.
    fn format_param(target: &Target) -> Option<String> {
        target
            .query
            .as_deref()?
            .split('&')
            .find_map(|kv| kv.strip_prefix("format="))
            .map(str::to_string)
    }

    /// Reads a batch in an adapter format into canonical dossiers: the operation yields
    /// `{"dossiers": [...]}`; national "absent" spellings (`""`, `[]`, `null`) are dropped.
    fn read_format(
        ctx: &mut RequestCtx,
        f: &crate::config::IntakeFormat,
        bytes: &[u8],
    ) -> Result<Vec<crate::exchange::dossier::Dossier>, GatewayError> {
        use crate::adapter::StepError;
        let step =
            f.op.request
                .as_ref()
                .ok_or_else(|| GatewayError::internal("intake format without a request step"))?;
        let mut c = crate::adapter::Context::new();
        if let Ok(id) = ctx.request_id.to_str() {
            c.insert("request_id".into(), id.to_string());
        }
        ctx.adapter = Some(crate::audit::record::Adapter {
            id: format!("{}/{}", f.system, f.operation),
            version: f.version.clone(),
        });
        let out = step.run(bytes, &c).map_err(|e| match e {
            StepError::Map(e) => GatewayError::new(
                ErrorKind::Unprocessable,
                "invalid_dossier",
                format!("the batch does not fit the {} format: {e}", f.system),
            ),
            e => GatewayError::bad_request(
                "untranslatable",
                format!("the body could not be read as {}: {e}", f.system),
            ),
        })?;
        ctx.request_translated = Some(crate::body::sha256(&out.body));
        let v: serde_json::Value = serde_json::from_slice(&out.body)
            .map_err(|e| GatewayError::internal(format!("adapter output: {e}")))?;
        let list = v["dossiers"].as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            return Err(GatewayError::new(
                ErrorKind::Unprocessable,
                "invalid_dossier",
                "the batch holds no dossier",
            ));
        }
        list.iter()
            .enumerate()
            .map(|(i, d)| {
                let d = crate::exchange::dossier::without_empty(d).unwrap_or_default();
                serde_json::from_value(d).map_err(|e| {
                    GatewayError::new(
                        ErrorKind::Unprocessable,
                        "invalid_dossier",
                        format!("invalid: dossiers[{i}]: {e}"),
                    )
                })
            })
            .collect()
    }

    /// The key under which an intake stores a caller's `Idempotency-Key`. A key is unique
    /// per client (draft-ietf-httpapi-idempotency-key-header), so it is scoped to the
    /// caller: its token's issuer, agency and subject, or its client certificate when it
    /// has no token. Two agencies that pick the same key get two dossiers, never the
    /// other's receipt or a 409 over the other's content. The items of a batch are keyed
    /// apart from single dossiers (`b{i}` against `s`): item 0 of a batch sent under `k` is
    /// not the dossier sent alone under `k#0`. The parts are length-prefixed, so no
    /// spelling of one caller's identity and key reads as another's.
    pub(crate) fn idempotency_scope(
        caller: Option<&crate::auth::caller::Caller>,
        cert: Option<&str>,
        key: &str,
        item: Option<usize>,
    ) -> String {
        use std::fmt::Write;
        let parts: [&str; 3] = match caller {
            Some(c) => [
                &c.issuer,
                c.agency.as_ref().map_or("", |a| a.as_str()),
                &c.subject,
            ],
            None => ["", "", cert.unwrap_or("")],
        };
        let mut s = String::with_capacity(key.len() + 48);
        for p in parts {
            let _ = write!(s, "{}:{p}", p.len());
        }
        match item {
            Some(i) => {
                let _ = write!(s, "b{i}:");
            }
            None => s.push_str("s:"),
        }
        s.push_str(key);
        s
    }

    /// Who files a dossier, as stored with it (`StoredDossier::submitted_by`): the
    /// caller's agency when its token names one (an agency's systems share its dossiers),
    /// else its token's issuer and subject, else its client certificate. `None` for an
    /// anonymous caller.
    pub(crate) fn submitter(
        caller: Option<&crate::auth::caller::Caller>,
        cert: Option<&str>,
    ) -> Option<String> {
        match (caller, cert) {
            (Some(c), _) => Some(match &c.agency {
                Some(a) => format!("agency:{}", a.as_str()),
                None => format!("subject:{}:{}{}", c.issuer.len(), c.issuer, c.subject),
            }),
            (None, Some(fp)) => Some(format!("cert:{fp}")),
            (None, None) => None,
        }
    }

    /// Whether a caller has a part in a stored dossier, and so may see its timeline and
    /// post its events: its submitter, the agency it was filed with (`receiving_unit`),
    /// or a caller holding one of the given roles (`[exchange] read_all_roles` for the
    /// timeline, `event_roles` for events). An anonymous caller (the exchange's `auth`
    /// admits anyone) has a part in every dossier: there is nobody to tell apart. Others
    /// are answered as if the dossier did not exist, so codes cannot be probed.
    pub(crate) fn has_part(
        caller: Option<&crate::auth::caller::Caller>,
        cert: Option<&str>,
        stored: &crate::store::exchange::StoredDossier,
        // Roles that reach every dossier: `read_all_roles` for the timeline,
        // `event_roles` for posting events.
        all_dossier_roles: &[String],
    ) -> bool {
        let Some(me) = submitter(caller, cert) else {
            return true;
        };
        let Some(c) = caller else {
            return stored.submitted_by.as_deref() == Some(me.as_str());
        };
        all_dossier_roles.iter().any(|r| c.has_role(r))
            || stored.submitted_by.as_deref() == Some(me.as_str())
            || c.agency
                .as_ref()
                .is_some_and(|a| a.as_str() == stored.dossier.receiving_unit)
    }

    async fn intake_inner(
        rt: &Runtime,
        ctx: &mut RequestCtx,
        parts: &http::request::Parts,
        target: &Target,
        body: Incoming,
        x: &crate::exchange::Exchange,
        rest: &str,
    ) -> Result<Response<Body>, GatewayError> {
        use crate::audit::record::RecordKind;
        use crate::config::AuditPolicy;
        use crate::exchange::dossier;
        use crate::store::exchange::{ExchangeStore, IntakeError};
        ctx.route = Some(Arc::from("exchange:intake"));
        // Intake is fail-closed: no receipt without its audit record.
        ctx.audit_as = Some((RecordKind::Intake, AuditPolicy::FailClosed));
        authenticate(rt, ctx, x.rule.as_ref(), parts, target).await?;
        let segs: Vec<&str> = rest
            .trim_start_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        let listener = rt
            .listener(&ctx.conn.listener)
            .map(|l| l.max_body_bytes)
            .unwrap_or(1 << 20);
        let read = |body: Incoming| async move {
            crate::body::collect_capped(Body::stream(body, Some(listener)), listener)
                .await
                .map_err(|_| {
                    GatewayError::new(
                        ErrorKind::PayloadTooLarge,
                        "body_too_large",
                        "the dossier is larger than the intake accepts",
                    )
                })
        };
        let idem = parts
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .filter(|k| !k.is_empty())
            .map(str::to_string);
        // An Idempotency-Key is the caller's own: stored under the caller's identity, two
        // agencies' keys never meet (see `idempotency_scope`).
        let who = (ctx.caller.clone(), cert_of(ctx).map(str::to_string));
        let scoped = |item: Option<usize>| {
            idem.as_deref()
                .map(|k| idempotency_scope(who.0.as_deref(), who.1.as_deref(), k, item))
        };
        let invalid = |errs: Vec<dossier::FieldError>| {
            let list: Vec<String> = errs
                .iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect();
            GatewayError::new(
                ErrorKind::Unprocessable,
                "invalid_dossier",
                format!("invalid: {}", list.join("; ")),
            )
        };
        let intake_err = |e: IntakeError| match e {
            IntakeError::Conflict(m) => GatewayError::new(
                ErrorKind::Conflict,
                "conflict",
                format!("a different dossier was already accepted under this code or key ({m})"),
            ),
            IntakeError::SpoolFull { retry_after_secs } => GatewayError::unavailable(
                "spool_full",
                "the intake spool is full; try again later",
                retry_after_secs,
            ),
            IntakeError::Invalid(errs) => invalid(errs),
            IntakeError::NotFound(c) => {
                GatewayError::new(ErrorKind::NotFound, "not_found", format!("no dossier {c}"))
            }
            IntakeError::Storage(m) => GatewayError::internal(m),
        };
        let accepted = |v: serde_json::Value, replayed: bool| {
            let mut r = Response::new(Body::full(serde_json::to_vec(&v).unwrap_or_default()));
            *r.status_mut() = http::StatusCode::ACCEPTED;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if replayed {
                r.headers_mut()
                    .insert("x-lienthong-replayed", HeaderValue::from_static("true"));
            }
            r
        };
        let method_err = |allow: &str| {
            GatewayError::method_not_allowed("method_not_allowed", "method not allowed here", allow)
        };
        match (segs.as_slice(), &parts.method) {
            ([], &Method::POST) if format_param(target).is_some() => {
                let bytes = read(body).await?;
                audit_stage::note_request(ctx, &bytes);
                let name = format_param(target).unwrap_or_default();
                let f = x.cfg.formats.get(&name).ok_or_else(|| {
                    GatewayError::new(
                        ErrorKind::UnsupportedMediaType,
                        "unknown_format",
                        format!(
                            "the intake reads no format {name:?} (known: {})",
                            x.cfg.formats.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    )
                })?;
                let dossiers = read_format(ctx, f, &bytes)?;
                // Every dossier of the batch is checked before any is stored.
                for (i, d) in dossiers.iter().enumerate() {
                    dossier::validate(d, &dossier::NoCatalogue).map_err(|errs| {
                        invalid(
                            errs.into_iter()
                                .map(|mut e| {
                                    e.path = format!("dossiers[{i}].{}", e.path);
                                    e
                                })
                                .collect(),
                        )
                    })?;
                    check_catalogue(rt, x, d, &format!("dossiers[{i}].")).await?;
                }
                // All or none: a failure on any item (a key reused for other content,
                // storage) stores no item, so a resend finds nothing half done.
                let items = dossiers
                    .into_iter()
                    .enumerate()
                    .map(|(i, d)| crate::store::exchange::BatchItem {
                        idempotency_key: scoped(Some(i)),
                        destinations: x.cfg.destinations_for(&d),
                        dossier: d,
                    })
                    .collect();
                let by = submitter(who.0.as_deref(), who.1.as_deref());
                let accepted_all = x
                    .store
                    .accept_batch_from(items, by)
                    .await
                    .map_err(intake_err)?;
                let mut receipts = Vec::new();
                let mut replayed = true;
                for a in accepted_all {
                    ctx.dossier = Some(a.receipt.dossier_code.clone());
                    replayed &= a.replayed;
                    receipts.push(serde_json::to_value(&a.receipt).unwrap_or_default());
                }
                Ok(accepted(
                    serde_json::json!({ "receipts": receipts }),
                    replayed,
                ))
            }
            ([], &Method::POST) => {
                let bytes = read(body).await?;
                audit_stage::note_request(ctx, &bytes);
                let d = dossier::parse_dossier(&bytes).map_err(invalid)?;
                check_catalogue(rt, x, &d, "").await?;
                let to = x.cfg.destinations_for(&d);
                let by = submitter(who.0.as_deref(), who.1.as_deref());
                // A dossier with neither a code nor an Idempotency-Key is keyed by its
                // bytes and the day (Vietnam time) it arrives: a client told to try again
                // (a 503 after the dossier was stored, a receipt lost on the way) gets
                // its first receipt back, not a second dossier under a second number,
                // while the same application filed again another day is a new dossier.
                // (NUL cannot be in a header value, so no caller key reads as a content
                // key.)
                let key = scoped(None).or_else(|| {
                    d.code.is_none().then(|| {
                        use crate::clock::Clock;
                        let digest = crate::audit::record::Sha256Hex::of(&bytes);
                        let now = crate::clock::SystemClock.since_epoch().as_millis() as i64;
                        let day = dossier::VnDateTime::from_unix_millis(now).format_national();
                        let key = format!("\0content:{}:{}", &day[..8], digest.as_str());
                        idempotency_scope(who.0.as_deref(), who.1.as_deref(), &key, None)
                    })
                });
                let a = x
                    .store
                    .accept_dossier_from(d, key, to, by)
                    .await
                    .map_err(intake_err)?;
                ctx.dossier = Some(a.receipt.dossier_code.clone());
                Ok(accepted(
                    serde_json::to_value(&a.receipt).unwrap_or_default(),
                    a.replayed,
                ))
            }
            ([], _) => Err(method_err("POST")),
            ([code], &Method::GET) => {
                ctx.audit_as = Some((RecordKind::Intake, AuditPolicy::FailOpen));
                ctx.dossier = Some(code.to_string());
                let visible = x
                    .store
                    .dossier(code.to_string())
                    .await
                    .map_err(GatewayError::internal)?
                    .is_some_and(|d| {
                        has_part(
                            who.0.as_deref(),
                            who.1.as_deref(),
                            &d,
                            &x.cfg.read_all_roles,
                        )
                    });
                let timeline = if visible {
                    x.store
                        .timeline(code.to_string())
                        .await
                        .map_err(GatewayError::internal)?
                } else {
                    None
                };
                match timeline {
                    Some(t) => {
                        let mut r =
                            Response::new(Body::full(serde_json::to_vec(&t).unwrap_or_default()));
                        r.headers_mut().insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        );
                        Ok(r)
                    }
                    None => Err(GatewayError::new(
                        ErrorKind::NotFound,
                        "not_found",
                        "no such dossier",
                    )),
                }
            }
            ([_], _) => Err(method_err("GET")),
            ([code, kind @ ("events" | "evaluation")], &Method::POST) => {
                ctx.audit_as = Some((RecordKind::Event, AuditPolicy::FailClosed));
                ctx.dossier = Some(code.to_string());
                let bytes = read(body).await?;
                let bytes = if *kind == "evaluation" {
                    // An evaluation is an event of kind "evaluation".
                    let mut v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
                        GatewayError::bad_request("bad_json", format!("the body is not JSON: {e}"))
                    })?;
                    if let Some(o) = v.as_object_mut() {
                        o.insert("kind".into(), "evaluation".into());
                    }
                    bytes::Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
                } else {
                    bytes
                };
                audit_stage::note_request(ctx, &bytes);
                let ev = dossier::parse_event(&bytes).map_err(invalid)?;
                // An event may not be dated in the future (beyond five minutes of clock
                // skew): one such event would make every genuine one after it "late".
                if let Some(at) = crate::store::exchange::event_at(&ev) {
                    use crate::clock::Clock;
                    let now = crate::clock::SystemClock.since_epoch().as_millis() as i64;
                    let horizon =
                        dossier::VnDateTime::from_unix_millis(now + 5 * 60_000).format_national();
                    if at > horizon.as_str() {
                        return Err(invalid(vec![dossier::FieldError::new(
                            "at",
                            format!("{at} is in the future (Vietnam time, yyyyMMddHHmmss)"),
                        )]));
                    }
                }
                // Only a party to the dossier (or a holder of `event_roles`) may add to
                // its timeline; anyone else is answered as for a code that does not
                // exist, as the timeline's readers are.
                let stored = x
                    .store
                    .dossier(code.to_string())
                    .await
                    .map_err(|e| GatewayError::internal(e.to_string()))?
                    .filter(|d| has_part(who.0.as_deref(), who.1.as_deref(), d, &x.cfg.event_roles))
                    .ok_or_else(|| {
                        GatewayError::new(ErrorKind::NotFound, "not_found", "no such dossier")
                    })?;
                // Events go where their dossier went, as stored with it: the configured
                // destinations may have changed since (a restart with another list), and
                // a destination that never had the dossier must not get its updates.
                let to = stored.destinations;
                let a = x
                    .store
                    .append_event(code.to_string(), ev, scoped(None), to)
                    .await
                    .map_err(intake_err)?;
                Ok(accepted(
                    serde_json::to_value(&a.receipt).unwrap_or_default(),
                    a.replayed,
                ))
            }
            ([_, "events" | "evaluation"], _) => Err(method_err("POST")),
            _ => Err(GatewayError::new(
                ErrorKind::NotFound,
                "not_found",
                "no such intake resource",
            )),
        }
    }

    /// What a lookup's request is logged, counted and audited as (both request paths).
    pub(crate) fn mark_lookup(ctx: &mut RequestCtx, l: &crate::cache::serve::ServedLookup) {
        ctx.route = Some(l.route.clone());
        ctx.audit_as = Some((
            crate::audit::record::RecordKind::Lookup,
            crate::config::AuditPolicy::FailOpen,
        ));
    }

    async fn lookup(
        rt: &Runtime,
        ctx: &mut RequestCtx,
        parts: &http::request::Parts,
        target: &Target,
        l: &crate::cache::serve::ServedLookup,
        key: Option<&str>,
    ) -> Result<Response<Body>, GatewayError> {
        mark_lookup(ctx, l);
        if parts.method != Method::GET && parts.method != Method::HEAD {
            return Err(GatewayError::method_not_allowed(
                "method_not_allowed",
                "lookups are read with GET",
                "GET, HEAD",
            ));
        }
        authenticate(rt, ctx, l.rule.as_ref(), parts, target).await?;
        // The path is still percent-encoded (normalised); a key is looked up as text,
        // and encoded again only where it goes into an upstream's path.
        let key = key
            .map(|k| {
                normalize::percent_decode(k).ok_or_else(|| {
                    GatewayError::bad_request("bad_key", "the key is not UTF-8 text")
                })
            })
            .transpose()?;
        let mut rsp = crate::cache::serve::answer(
            l,
            key.as_deref(),
            parts.headers.get(header::IF_NONE_MATCH),
            parts.method == Method::HEAD,
        )
        .await?;
        rsp.headers_mut()
            .insert(headers::X_REQUEST_ID.clone(), ctx.request_id.clone());
        Ok(rsp)
    }

    /// `/.well-known/jwks.json`: the public half of lienthong's signing key, so that
    /// upstreams can verify the JWTs lienthong presents to them.
    fn jwks(rt: &Runtime, parts: &http::request::Parts, target: &Target) -> Option<Response<Body>> {
        if target.path != "/.well-known/jwks.json" || parts.method != Method::GET {
            return None;
        }
        let jwks = rt.auth.own_jwks.clone()?;
        let mut r = Response::new(Body::full(jwks));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/jwk-set+json"),
        );
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=300"),
        );
        Some(r)
    }
}

pub mod forward {
    //! Building the upstream request, and upgrade tunnels.
    use super::*;

    pub fn prepare(
        rt: &Runtime,
        ctx: &RequestCtx,
        route: &RouteConfig,
        target: &Target,
        parts: &mut http::request::Parts,
        body: Body,
        upgrade: bool,
    ) -> Result<OutboundRequest, GatewayError> {
        let mut h = std::mem::take(&mut parts.headers);
        let present = headers::Present::survey(&h);
        if present.hop_by_hop {
            headers::strip_hop_by_hop(&mut h, upgrade);
        }
        // The length is derived from the body actually sent (hyper sets it from the
        // body's exact size, or uses chunked framing), never copied from the client.
        if present.content_length {
            h.remove(header::CONTENT_LENGTH);
        }
        let host = target.host_fields.as_deref();
        headers::set_forwarded(&mut h, &ctx.conn.forwarding, host, &present);
        h.insert(headers::X_REQUEST_ID.clone(), ctx.request_id.clone());
        if present.gateway_owned {
            headers::strip_gateway_owned(&mut h);
        }
        if present.authorization && !rt.auth.forward_token[ctx.route_index.unwrap_or(0)] {
            h.remove(header::AUTHORIZATION);
        }
        if let Some(c) = &ctx.caller {
            headers::set_caller(&mut h, c);
        }
        if let Some(fp) = ctx
            .conn
            .tls
            .as_ref()
            .and_then(|t| t.client_cert_sha256.as_deref())
        {
            if let Ok(v) = HeaderValue::from_str(fp) {
                h.insert(headers::X_CLIENT_CERT_S256.clone(), v);
            }
        }
        headers::append_via(
            &mut h,
            parts.version,
            &rt.config.server.via_name,
            present.via,
        );
        match &route.host_header {
            HostHeader::Preserve => {
                if let Some(f) = host {
                    h.insert(header::HOST, f.value.clone());
                }
            }
            HostHeader::Literal(l) => {
                if let Ok(v) = HeaderValue::from_str(l) {
                    h.insert(header::HOST, v);
                }
            }
            HostHeader::Upstream => {}
        }
        // Where the route leaves the path alone and normalising did not change it,
        // the client's target goes on as it is (a reference, not a copy).
        let as_sent = parts
            .uri
            .path_and_query()
            .filter(|pq| route::keeps_path(route) && pq.path() == target.path);
        let path_and_query = match as_sent {
            Some(pq) => pq.clone(),
            None => {
                let mut pq = route::upstream_path(route, &target.path);
                if let Some(q) = &target.query {
                    pq.push('?');
                    pq.push_str(q);
                }
                pq.parse().map_err(|_| {
                    GatewayError::bad_request("bad_target", "the request target is not valid")
                })?
            }
        };
        let method = parts.method.clone();
        let idempotent = route.retry_non_idempotent || method.is_idempotent();
        Ok(OutboundRequest {
            method,
            path_and_query,
            headers: h,
            body,
            idempotent,
            timeout: route
                .timeout
                .unwrap_or(rt.pools[&route.upstream].cfg.request_timeout),
            host_from_endpoint: route.host_header == HostHeader::Upstream,
        })
    }

    /// Joins the client's and the upstream's upgraded connections and copies bytes
    /// both ways until either side closes.
    /// Joins the client's and the upstream's upgraded connections. A tunnel with no
    /// bytes either way for `idle` (the listener's idle timeout) is closed.
    pub fn tunnel(
        conn: &crate::server::ConnInfo,
        client: hyper::upgrade::OnUpgrade,
        upstream_rsp: &mut Response<Body>,
        idle: std::time::Duration,
    ) {
        let upstream = hyper::upgrade::on(&mut *upstream_rsp);
        let task = tokio::spawn(async move {
            let (Ok(c), Ok(u)) = (client.await, upstream.await) else {
                return;
            };
            let activity = Arc::new(crate::server::Activity::new());
            let mut c =
                crate::server::ConnIo::new(hyper_util::rt::TokioIo::new(c), None, activity.clone());
            let mut u = hyper_util::rt::TokioIo::new(u);
            let idle_ms = idle.as_millis() as u64;
            let watchdog = async {
                loop {
                    let quiet = crate::clock::mono_ms().saturating_sub(activity.moved());
                    if quiet >= idle_ms {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(idle_ms - quiet)).await;
                }
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut c, &mut u) => {}
                () = watchdog => tracing::debug!("idle tunnel closed"),
            }
        });
        // The connection waits for it (see `ConnInfo::tunnel`).
        if let Ok(mut t) = conn.tunnel.lock() {
            *t = Some(task);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response-cache key tells apart callers known only by their client certificate
    /// (the upstream is told the certificate), and callers with the same token claims
    /// on different certificates; only a caller with neither shares the anonymous slot.
    #[test]
    fn cache_keys_tell_client_certificates_apart() {
        let h = http::HeaderMap::new();
        let target = Target {
            path: "/x".into(),
            query: None,
            host_fields: None,
            absolute_form: false,
        };
        let who = |caller: Option<&crate::auth::caller::Caller>, cert: Option<&str>| {
            let k = cached::request_key(&h, caller, cert, "https", "T:1");
            let r = cached::req(&target, &k);
            (r.caller.map(str::to_string), r.origin.to_string())
        };
        let (a, origin) = who(None, Some("cert-a"));
        assert_eq!(origin, "https://t:1");
        assert!(a.is_some());
        assert_ne!(a, who(None, Some("cert-b")).0);
        assert_eq!(who(None, None).0, None);
        let c = token_caller("iss", Some("000.00.01.H22"), "s", &[]);
        assert_ne!(
            who(Some(&c), Some("cert-a")).0,
            who(Some(&c), Some("cert-b")).0
        );
        assert_ne!(who(Some(&c), None).0, who(None, None).0);
        // A certificate with credentials the gateway did not verify is no identity.
        let mut with_cookie = http::HeaderMap::new();
        with_cookie.insert(header::COOKIE, HeaderValue::from_static("session=1"));
        let k = cached::request_key(&with_cookie, None, Some("cert-a"), "https", "t");
        assert_eq!(cached::req(&target, &k).caller, None);
    }

    /// A token's caller: issuer, agency (if any), subject and roles.
    fn token_caller(
        issuer: &str,
        agency: Option<&str>,
        subject: &str,
        roles: &[&str],
    ) -> crate::auth::caller::Caller {
        crate::auth::caller::Caller {
            issuer: issuer.into(),
            agency: agency.map(|a| crate::auth::caller::AgencyCode::parse(a).unwrap()),
            subject: subject.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            scopes: vec![],
            cnf_x5t_s256: None,
            expires_at: 0,
        }
    }

    #[test]
    fn a_dossier_is_readable_by_its_submitter_its_receiving_unit_and_monitors() {
        use crate::store::exchange::StoredDossier;
        let caller = |agency, subject, roles| token_caller("idp", agency, subject, roles);
        let stored = |by: Option<String>| StoredDossier {
            dossier: crate::exchange::dossier::tests::sample_dossier(),
            content_hash: String::new(),
            idempotency_key: None,
            status: crate::exchange::dossier::TrangThaiHoSo::from_code(1).unwrap(),
            received_at_ms: 0,
            destinations: vec![],
            submitted_by: by,
        };
        let roles = vec!["giam-sat".to_string()];
        let portal = caller(Some("000.00.05.H22"), "portal", &[]);
        let same_agency = caller(Some("000.00.05.H22"), "other-system", &[]);
        let receiving = caller(Some("000.00.01.H22"), "x", &[]);
        let stranger = caller(Some("000.00.09.H22"), "portal", &[]);
        let monitor = caller(Some("000.00.09.H22"), "x", &["giam-sat"]);
        let service = caller(None, "svc-a", &[]);
        let other_service = caller(None, "svc-b", &[]);
        let read = |c: Option<&crate::auth::caller::Caller>,
                    cert: Option<&str>,
                    d: &StoredDossier| { local::has_part(c, cert, d, &roles) };
        let by_portal = stored(local::submitter(Some(&portal), None));
        assert!(read(Some(&portal), None, &by_portal));
        assert!(
            read(Some(&same_agency), None, &by_portal),
            "an agency's systems share"
        );
        assert!(read(Some(&receiving), None, &by_portal));
        assert!(read(Some(&monitor), None, &by_portal));
        assert!(!read(Some(&stranger), None, &by_portal));
        assert!(!read(Some(&service), None, &by_portal));
        let by_service = stored(local::submitter(Some(&service), None));
        assert!(read(Some(&service), None, &by_service));
        assert!(!read(Some(&other_service), None, &by_service));
        assert!(!read(Some(&stranger), None, &by_service));
        assert!(read(Some(&receiving), None, &by_service));
        let by_cert = stored(local::submitter(None, Some("fp-a")));
        assert!(read(None, Some("fp-a"), &by_cert));
        assert!(!read(None, Some("fp-b"), &by_cert));
        // Unknown submitter (anonymous intake, or stored before submitters were kept).
        let unknown = stored(None);
        assert!(read(Some(&receiving), None, &unknown));
        assert!(!read(Some(&portal), None, &unknown));
        assert!(!read(None, Some("fp-a"), &unknown));
        // Anonymous callers: the exchange admits anyone, nobody to tell apart.
        assert!(read(None, None, &by_portal));
        // A subject that spells an agency principal is not that agency.
        let spoof = caller(None, "agency:000.00.05.H22", &[]);
        assert!(!read(Some(&spoof), None, &by_portal));
    }

    #[test]
    fn idempotency_keys_are_kept_apart_by_caller_and_by_batch_item() {
        let caller = |issuer, agency, subject| token_caller(issuer, agency, subject, &[]);
        let scope = local::idempotency_scope;
        let a = caller("idp", Some("000.00.01.H22"), "portal");
        let b = caller("idp", Some("000.00.02.H22"), "portal");
        let keys = [
            scope(Some(&a), None, "k", None),
            scope(Some(&b), None, "k", None),
            scope(
                Some(&caller("other", Some("000.00.01.H22"), "portal")),
                None,
                "k",
                None,
            ),
            scope(
                Some(&caller("idp", Some("000.00.01.H22"), "clerk")),
                None,
                "k",
                None,
            ),
            // A subject that spells another's identity and key runs into its length prefix.
            scope(Some(&caller("idp", None, "5:idp")), None, "k", None),
            scope(None, None, "k", None),
            scope(None, Some("cert-a"), "k", None),
            scope(None, Some("cert-b"), "k", None),
            // Item 0 of a batch under "k" is not the single dossier sent under "k#0".
            scope(Some(&a), None, "k", Some(0)),
            scope(Some(&a), None, "k#0", None),
            scope(Some(&a), None, "k", Some(1)),
        ];
        for (i, x) in keys.iter().enumerate() {
            for y in &keys[i + 1..] {
                assert_ne!(x, y);
            }
        }
        assert_eq!(keys[0], scope(Some(&a), None, "k", None), "stable");
    }

    #[test]
    fn cache_keys_tell_apart_every_caller_fact_the_upstream_sees() {
        let caller =
            |roles: &[&str], scopes: &[&str], cnf: Option<&str>| crate::auth::caller::Caller {
                issuer: "dev".into(),
                agency: None,
                subject: "svc".into(),
                roles: roles.iter().map(|r| r.to_string()).collect(),
                scopes: scopes.iter().map(|r| r.to_string()).collect(),
                cnf_x5t_s256: cnf.map(str::to_string),
                expires_at: 0,
            };
        let h = http::HeaderMap::new();
        let who = |c: &crate::auth::caller::Caller| {
            let t = Target {
                host_fields: None,
                path: "/p".into(),
                query: None,
                absolute_form: false,
            };
            let k = cached::request_key(&h, Some(c), None, "https", "portal.example");
            cached::req(&t, &k).caller.map(str::to_string)
        };
        let base = who(&caller(&["a"], &["s"], None));
        assert_ne!(base, who(&caller(&["a", "b"], &["s"], None)), "roles");
        assert_ne!(base, who(&caller(&["a"], &["s", "t"], None)), "scopes");
        assert_ne!(
            base,
            who(&caller(&["a"], &["s"], Some("x5t"))),
            "certificate"
        );
        assert_ne!(
            who(&caller(&["ab"], &[], None)),
            who(&caller(&["a", "b"], &[], None))
        );
        assert_eq!(base, who(&caller(&["a"], &["s"], None)));
        assert_eq!(
            who(&caller(&["b", "a"], &[], None)),
            who(&caller(&["a", "b"], &[], None)),
            "order does not matter"
        );
    }

    #[test]
    fn generated_request_ids_are_prefix_dash_counter_in_hex() {
        let parse = |v: HeaderValue| {
            let s = v.to_str().unwrap().to_string();
            let (prefix, n) = s.split_once('-').unwrap();
            assert_eq!(prefix.len(), 16);
            assert!(prefix.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(!n.is_empty() && n.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
            (prefix.to_string(), u64::from_str_radix(n, 16).unwrap())
        };
        let empty = http::HeaderMap::new();
        let (p1, n1) = parse(request_id(&empty));
        let (p2, n2) = parse(request_id(&empty));
        assert_eq!(p1, p2);
        assert!(n2 > n1);
        // A well-formed client id is kept; anything else is replaced.
        let mut h = http::HeaderMap::new();
        h.insert(&headers::X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(&headers::X_REQUEST_ID, HeaderValue::from_static("a b"));
        assert_ne!(request_id(&h), "a b");
    }
}
