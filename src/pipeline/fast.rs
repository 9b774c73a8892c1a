//! The fast path for HTTP/1.1: the request path of [`super::handle`] for the common
//! cases that need none of its stages but routing, the token check, the proxy header
//! rules or a lookup's answer, done on bytes instead of through hyper.
//!
//! Every HTTP/1 connection starts here (`server::serve_http`). A request head is
//! parsed with `httparse` and taken only when each stage of `handle` would be the
//! identity or the simple rewrite this module repeats:
//! - HTTP/1.1; GET, HEAD, POST, PUT, DELETE, PATCH or OPTIONS; an origin-form target
//!   that normalisation leaves as it is, in a conservative character set; exactly one
//!   valid `Host`; within the listener's head, field-count and URI limits;
//! - no field the gateway must interpret or replace beyond these: no
//!   `Transfer-Encoding`, `Expect`, `Upgrade`, `TE`, `Trailer`, `Keep-Alive`,
//!   `Proxy-*`, no `Connection` but `keep-alive` or `close`, no forwarding field, no
//!   `Via`, no `X-Lienthong-*`;
//! - a body with `Content-Length` under the route's cap, already read in full;
//! - a route that is untranslated and uncached, to an HTTP/1.1 pool without upstream
//!   credentials, with (when the audit log is on) the fail-open record that keeps no
//!   bodies; or a lookup read with a plain `GET` (no body, no `If-None-Match`), answered
//!   as `local::lookup` answers it (`cache::serve::answer`); not the gateway's other
//!   own answers (JWKS, intake);
//! - a route or lookup that is anonymous or checks tokens. A caller the verified-token cache
//!   admits is taken as it is (`AuthRuntime::check_rule_cached`); any other token is
//!   checked in `exchange`, before anything goes upstream, by the full path's own
//!   `AuthRuntime::check_rule`, whose refusals are answered through
//!   [`respond::finish`] as the full path answers them. The caller's fields go
//!   upstream (`headers::caller_fields`) and into the record.
//!
//! Anything else — including every request the full path would refuse before its
//! auth stage — hands the connection, with the bytes read so far, to hyper and
//! [`super::handle`] for the rest of its life, before anything of that request has
//! been acted on. So the fast path decides nothing the full path would decide
//! differently: it only does less work.
//!
//! What it sends upstream is what `forward::prepare` would: the client's fields
//! (names in lower case, as hyper writes them) without `Host`, `Connection`,
//! `Content-Length`, `X-Request-Id` and (unless the route forwards it)
//! `Authorization`; then `X-Forwarded-For/-Proto/-Host`, `Forwarded`, the request id,
//! the verified caller's fields, the client certificate's thumbprint, `Via`,
//! `Content-Length` and `Host` (per the route's `host_header`). What it sends back is
//! what `respond::upstream` and hyper's server would: hop-by-hop fields (and those
//! `Connection` names) removed, `Via` appended, the request id, `Date` when the
//! upstream gave none, the body framed by its length or re-chunked. Errors go through [`respond::finish`], the one place that
//! maps them, every request through `observe`, and with the audit log every request
//! leaves the record the full path's audit stage would: the request body's digest
//! (it is in memory), the response body's as it goes out (`audit_stage::fast_path_tap`),
//! and `interrupted` (499) for a client that hangs up while its token is checked or the
//! upstream works — the client's socket is watched then, and while the upstream's body
//! is awaited, as hyper's server watches it (`watching`).

use super::*;
use crate::server::{ConnIo, Exchanges, Open};
use crate::upstream::raw::{Framing, RawAnswer, RawRequest, READ_CHUNK};
use crate::upstream::Pool;
use std::sync::atomic::AtomicBool;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Most fields a request taken here may have (an array on the stack); a request with
/// more goes to hyper.
const MAX_FIELDS: usize = 64;

/// A connection's read buffer: `data[start..end]` is read and not yet used.
pub(crate) struct ReadBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    pub(crate) fn new() -> ReadBuf {
        ReadBuf {
            data: vec![0; 8 * 1024],
            start: 0,
            end: 0,
        }
    }

    /// The bytes read and not yet used (handed to hyper on a fallback).
    pub(crate) fn unread(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
}

/// Serves requests on an HTTP/1 connection until it ends, or sets `fallback` and
/// returns when a request is one for hyper (its bytes left in `buf`). `closing` is
/// the watchdog's graceful shutdown: no new request is read, and the response in
/// progress says `Connection: close`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve<I>(
    gw: &crate::runtime::Gateway,
    conn: &Arc<ConnInfo>,
    io: &mut ConnIo<I>,
    buf: &mut ReadBuf,
    exchanges: &Arc<Exchanges>,
    closing: &AtomicBool,
    fallback: &AtomicBool,
) -> Result<(), std::convert::Infallible>
where
    I: AsyncRead + AsyncWrite + Unpin + Send,
{
    loop {
        let plan = loop {
            if buf.start < buf.end {
                let rt = gw.runtime();
                match decide(rt, conn, buf.unread()) {
                    Decision::Take(p) => break p,
                    Decision::Partial if buf.start > 0 || buf.end < buf.data.len() => {}
                    Decision::Partial | Decision::Fallback => {
                        fallback.store(true, Ordering::Relaxed);
                        return Ok(());
                    }
                }
            }
            if buf.start > 0 {
                buf.data.copy_within(buf.start..buf.end, 0);
                buf.end -= buf.start;
                buf.start = 0;
            }
            let n = std::future::poll_fn(|cx| {
                if closing.load(Ordering::Relaxed) {
                    return std::task::Poll::Ready(Ok(0));
                }
                let mut rb = tokio::io::ReadBuf::new(&mut buf.data[buf.end..]);
                match std::pin::Pin::new(&mut *io).poll_read(cx, &mut rb) {
                    std::task::Poll::Ready(Ok(())) => std::task::Poll::Ready(Ok(rb.filled().len())),
                    std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
                    std::task::Poll::Pending => std::task::Poll::Pending,
                }
            })
            .await;
            match n {
                Ok(0) | Err(_) => return Ok(()),
                Ok(n) => buf.end += n,
            }
        };
        buf.consume(plan.consumed);
        gw.fast_path_requests.fetch_add(1, Ordering::Relaxed);
        let close = plan.close;
        // Shutting down after the answer: no pipelined request is taken either.
        if !exchange(plan, io, buf, exchanges, closing).await
            || close
            || closing.load(Ordering::Relaxed)
        {
            // Flushes and closes the write side (TLS: close_notify) before the
            // connection is dropped.
            let _ = io.shutdown().await;
            return Ok(());
        }
    }
}

// Unboxed: a decision is made once per request and moved once; a box would be an
// allocation per request for nothing.
#[allow(clippy::large_enum_variant)]
enum Decision {
    Take(Plan),
    /// The head is not complete yet.
    Partial,
    Fallback,
}

struct Plan {
    rt: Arc<Runtime>,
    ctx: RequestCtx,
    work: Work,
    /// The client asked to close after this exchange.
    close: bool,
    /// Bytes of the head and body.
    consumed: usize,
    /// A token the verified-token cache could not vouch for: checked before the
    /// request goes upstream, as the full path's auth stage would check it.
    auth: Option<PendingAuth>,
}

/// What a taken request asks for.
enum Work {
    /// Proxied to a pool.
    Proxy { pool: Arc<Pool>, req: RawRequest },
    /// Answered from a lookup (`GET /lookups/{name}[/{key}]`, the key decoded), as the
    /// full path's `local::lookup` answers it.
    Lookup {
        lookup: Arc<crate::cache::serve::ServedLookup>,
        key: Option<String>,
    },
}

/// Whose access rule a token is checked against.
enum RuleOf {
    Route(usize),
    Lookup(Arc<crate::cache::serve::ServedLookup>),
}

impl RuleOf {
    fn rule<'a>(&'a self, rt: &'a Runtime) -> Option<&'a crate::auth::rules::AccessRule> {
        match self {
            RuleOf::Route(i) => rt.auth.rules[*i].as_ref(),
            RuleOf::Lookup(l) => l.rule.as_ref(),
        }
    }
}

/// What the full path's `authenticate` reads of a request, for a check that awaits
/// (a signature to verify, maybe a key set to fetch).
struct PendingAuth {
    rule: RuleOf,
    authorization: http::HeaderMap,
    query: Option<String>,
    /// Where in the upstream head the caller's fields go (after the request id, as
    /// for a cached caller and on the full path).
    caller_at: usize,
}

/// Bytes a path may have here: unreserved, sub-delims, `:`, `@` and `/`; no `%`.
fn path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b)
}

/// A query may have those and `?` and `%` (it is passed on as it is, both paths).
fn query_byte(b: u8) -> bool {
    path_byte(b) || b == b'?' || b == b'%'
}

/// Fields whose presence sends the request to the full path.
/// (`Connection` is looked at by the caller: `keep-alive` and `close` are taken.)
fn needs_full_path(name: &[u8]) -> bool {
    let lower = |p: &[u8]| name.len() >= p.len() && name[..p.len()].eq_ignore_ascii_case(p);
    headers::is_hop_by_hop_name(name)
        || name.eq_ignore_ascii_case(b"expect")
        || name.eq_ignore_ascii_case(b"via")
        || lower(b"x-lienthong-")
        || ((lower(b"x-") || lower(b"true-") || lower(b"forwarded"))
            && headers::is_forwarding_name(name))
}

fn decide(rt: Arc<Runtime>, conn: &Arc<ConnInfo>, bytes: &[u8]) -> Decision {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    let head_len = match req.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Decision::Partial,
        Err(_) => return Decision::Fallback,
    };
    match plan(rt, conn, &req, head_len, &bytes[head_len..]) {
        Some(p) => Decision::Take(p),
        None => Decision::Fallback,
    }
}

fn plan(
    rt: Arc<Runtime>,
    conn: &Arc<ConnInfo>,
    req: &httparse::Request<'_, '_>,
    head_len: usize,
    after_head: &[u8],
) -> Option<Plan> {
    if req.version != Some(1) {
        return None;
    }
    let method = match req.method? {
        "GET" => Method::GET,
        "HEAD" => Method::HEAD,
        "POST" => Method::POST,
        "PUT" => Method::PUT,
        "DELETE" => Method::DELETE,
        "PATCH" => Method::PATCH,
        "OPTIONS" => Method::OPTIONS,
        _ => return None,
    };
    let l = rt.listener(&conn.listener)?;
    let target = req.path?;
    let (raw_path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    if !raw_path.starts_with('/')
        || !raw_path.bytes().all(path_byte)
        || !query.is_none_or(|q| q.bytes().all(query_byte))
        || target.len() > l.max_uri_bytes
        || req.headers.len() > l.max_headers
    {
        return None;
    }
    let head_bytes: usize = req
        .headers
        .iter()
        .map(|f| f.name.len() + f.value.len() + 4)
        .sum::<usize>()
        + target.len();
    if head_bytes > l.max_header_bytes {
        return None;
    }
    let path = normalize::normalize_path(raw_path).ok()?;
    if path != raw_path {
        return None;
    }
    let mut host = None;
    let mut length: Option<u64> = None;
    let mut close = false;
    let mut client_id = None;
    for f in req.headers.iter() {
        let name = f.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            if host.is_some() {
                return None;
            }
            host = Some(std::str::from_utf8(f.value).ok()?);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let v = std::str::from_utf8(f.value).ok()?;
            if length.is_some() || v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            length = Some(v.parse().ok()?);
        } else if name.eq_ignore_ascii_case(b"connection") {
            if f.value.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if !f.value.eq_ignore_ascii_case(b"keep-alive") {
                return None;
            }
        } else if name.eq_ignore_ascii_case(b"x-request-id") {
            client_id.get_or_insert(f.value);
        } else if needs_full_path(name) {
            return None;
        }
    }
    let host = conn.forwarding.host(host?)?;
    if let Some((name, key)) = crate::cache::serve::parse_path(&path) {
        // A lookup the full path would answer itself (`local::lookup`): a plain GET
        // without a body or a condition; HEAD, `If-None-Match`, a key that does not
        // decode and an unknown lookup stay the full path's.
        let l = rt.lookups.get(name)?.clone();
        if method != Method::GET
            || length.is_some_and(|n| n > 0)
            || req
                .headers
                .iter()
                .any(|f| f.name.eq_ignore_ascii_case("if-none-match"))
        {
            return None;
        }
        let key = match key {
            Some(k) => Some(normalize::percent_decode(k)?),
            None => None,
        };
        let request_id = request_id(client_id)?;
        let (caller, auth) = auth_stage(
            &rt,
            conn,
            req,
            query,
            l.rule.as_ref()?,
            RuleOf::Lookup(l.clone()),
        )?;
        let mut ctx = RequestCtx::with(
            conn.clone(),
            request_id,
            method,
            http::Version::HTTP_11,
            path,
        );
        local::mark_lookup(&mut ctx, &l);
        ctx.caller = caller;
        return Some(Plan {
            rt,
            ctx,
            work: Work::Lookup { lookup: l, key },
            close,
            consumed: head_len + length.unwrap_or(0) as usize,
            auth,
        });
    }
    if path == "/.well-known/jwks.json"
        || (rt.exchange.is_some() && (path == "/v1/dossiers" || path.starts_with("/v1/dossiers/")))
    {
        return None;
    }
    let (idx, route) = route::select(
        &rt.config.routes,
        &rt.route_order,
        &conn.listener,
        &host.host,
        &path,
        method.as_str(),
    )
    .ok()?;
    let pool = rt.route_pools[idx].clone();
    if route.translate.is_some()
        || rt.route_caches[idx].is_some()
        || !pool.takes_raw()
        || (rt.audit.is_some() && !audit_stage::fast_path_records(route))
    {
        return None;
    }
    let length = length.unwrap_or(0);
    let cap = route.max_body_bytes.unwrap_or(l.max_body_bytes);
    // With one attempt the full path streams a body upstream, and its audit record has
    // the body's digest only if the upstream read it: a record this path, which holds
    // the body, could not match when the attempt fails first.
    let streamed = pool.cfg.retry.attempts <= 1 && rt.audit.is_some();
    if length > cap || (after_head.len() as u64) < length || (streamed && length > 0) {
        return None;
    }
    let body = bytes::Bytes::copy_from_slice(&after_head[..length as usize]);
    let request_id = request_id(client_id)?;
    let host_value = match &route.host_header {
        HostHeader::Preserve => Some(bytes::Bytes::copy_from_slice(host.value.as_bytes())),
        HostHeader::Literal(v) => Some(bytes::Bytes::copy_from_slice(
            HeaderValue::from_str(v).ok()?.as_bytes(),
        )),
        HostHeader::Upstream => None,
    };
    // A route without a rule denies everyone: the full path answers that.
    let (caller, mut auth) = auth_stage(
        &rt,
        conn,
        req,
        query,
        rt.auth.rules[idx].as_ref()?,
        RuleOf::Route(idx),
    )?;
    let forward_token = rt.auth.forward_token[idx];

    // The upstream request head, as `forward::prepare` and hyper's client make it.
    let mut head = Vec::with_capacity(head_len + 256);
    head.extend_from_slice(method.as_str().as_bytes());
    head.push(b' ');
    if route::keeps_path(route) {
        head.extend_from_slice(target.as_bytes());
    } else {
        head.extend_from_slice(route::upstream_path(route, &path).as_bytes());
        if let Some(q) = query {
            head.push(b'?');
            head.extend_from_slice(q.as_bytes());
        }
    }
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for f in req.headers.iter() {
        let name = f.name.as_bytes();
        let skip = [
            &b"host"[..],
            b"content-length",
            b"connection",
            b"x-request-id",
        ]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
            || (!forward_token && name.eq_ignore_ascii_case(b"authorization"))
            // `Connection: close` names a field `close` too: hop-by-hop.
            || (close && name.eq_ignore_ascii_case(b"close"));
        if !skip {
            put_lower(&mut head, name, f.value);
        }
    }
    let fwd = &conn.forwarding;
    put(&mut head, b"x-forwarded-for", fwd.for_value.as_bytes());
    put(&mut head, b"x-forwarded-proto", fwd.proto.as_bytes());
    put(&mut head, b"x-forwarded-host", host.value.as_bytes());
    if let Some(v) = &host.forwarded {
        put(&mut head, b"forwarded", v.as_bytes());
    }
    put(&mut head, b"x-request-id", request_id.as_bytes());
    if let Some(c) = &caller {
        headers::caller_fields(c, |name, v| put(&mut head, name.as_bytes(), v.as_bytes()));
    }
    if let Some(p) = &mut auth {
        p.caller_at = head.len();
    }
    if let Some(fp) = conn
        .tls
        .as_ref()
        .and_then(|t| t.client_cert_sha256.as_deref())
    {
        put(&mut head, b"x-lienthong-client-cert-s256", fp.as_bytes());
    }
    if let Some(v) = rt.config.server.via_name.value(http::Version::HTTP_11) {
        put(&mut head, b"via", v.as_bytes());
    }
    if length > 0 || (method != Method::GET && method != Method::HEAD && method != Method::DELETE) {
        let mut n = itoa::Buffer::new();
        put(&mut head, b"content-length", n.format(length).as_bytes());
    }
    let idempotent = route.retry_non_idempotent || method.is_idempotent();
    let timeout = route.timeout.unwrap_or(pool.cfg.request_timeout);
    let head_only = method == Method::HEAD;
    let mut ctx = RequestCtx::with(
        conn.clone(),
        request_id,
        method,
        http::Version::HTTP_11,
        path,
    );
    ctx.route = Some(rt.route_names[idx].clone());
    ctx.route_index = Some(idx);
    ctx.caller = caller;
    if auth.is_none() {
        // What the full path knows once its auth stage has passed (a token still to
        // be checked has them set in `exchange`, after the check, as there).
        past_auth(&rt, &mut ctx, idx, &body);
    }
    Some(Plan {
        rt,
        ctx,
        work: Work::Proxy {
            pool,
            req: RawRequest {
                head,
                host: host_value,
                body,
                idempotent,
                head_only,
                timeout,
            },
        },
        close,
        consumed: head_len + length as usize,
        auth,
    })
}

/// The request id: the client's when it is sane, else a new one (`intake`'s rule);
/// None (for the full path) for a sane one that is not a field value.
fn request_id(client: Option<&[u8]>) -> Option<HeaderValue> {
    match client {
        Some(v) if sane_request_id(v) => HeaderValue::from_bytes(v).ok(),
        _ => Some(new_request_id()),
    }
}

/// The auth stage of a request this path takes, against `rule`: an anonymous rule
/// admits it as it is, and a caller the verified-token cache admits goes as it is
/// (asked last, when nothing else sends the request to the full path: a hit counts).
/// Any other token is checked in `exchange` by the full path's own check, refusals and
/// their answers included: the `PendingAuth`. None: for the full path.
fn auth_stage(
    rt: &Runtime,
    conn: &ConnInfo,
    req: &httparse::Request<'_, '_>,
    query: Option<&str>,
    rule: &crate::auth::rules::AccessRule,
    of: RuleOf,
) -> Option<(
    Option<Arc<crate::auth::caller::Caller>>,
    Option<PendingAuth>,
)> {
    if rule.anonymous {
        return Some((None, None));
    }
    let mut tokens: [&[u8]; 2] = [&[], &[]];
    let mut n = 0;
    for f in req.headers.iter() {
        if f.name.eq_ignore_ascii_case("authorization") {
            if n < 2 {
                tokens[n] = f.value;
            }
            n += 1;
        }
    }
    let cert = conn
        .tls
        .as_ref()
        .and_then(|t| t.client_cert_sha256.as_deref());
    if let Some(c) = rt
        .auth
        .check_rule_cached(rule, &tokens[..n.min(2)], query, cert)
    {
        return Some((Some(c), None));
    }
    let mut authorization = http::HeaderMap::new();
    for f in req.headers.iter() {
        if f.name.eq_ignore_ascii_case("authorization") {
            authorization.append(
                http::header::AUTHORIZATION,
                HeaderValue::from_bytes(f.value).ok()?,
            );
        }
    }
    Some((
        None,
        Some(PendingAuth {
            rule: of,
            authorization,
            query: query.map(str::to_string),
            caller_at: 0,
        }),
    ))
}

/// The request's context as the full path has it past its auth stage: the pool that
/// will be asked and (with the audit log) the request body's digest — the body is all
/// here, so its digest now, as the full path's tap would report it.
fn past_auth(rt: &Runtime, ctx: &mut RequestCtx, route: usize, body: &bytes::Bytes) {
    ctx.upstream = Some(rt.pool_names[route].clone());
    if rt.audit.is_some() && !body.is_empty() {
        audit_stage::note_request(ctx, body);
    }
}

fn put(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn put_lower(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend(name.iter().map(u8::to_ascii_lowercase));
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Runs one exchange; false when the client connection must end (it went away, or
/// the response could not be completed).
async fn exchange<I>(
    plan: Plan,
    io: &mut ConnIo<I>,
    buf: &mut ReadBuf,
    exchanges: &Arc<Exchanges>,
    closing: &AtomicBool,
) -> bool
where
    I: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Plan {
        rt,
        ctx,
        mut work,
        close,
        auth,
        ..
    } = plan;
    let mut open = Open::new(exchanges.clone());
    let mut guard = Interrupted {
        rt: &rt,
        ctx,
        armed: true,
    };
    // While the token is checked and while the upstream works, the client's side is
    // watched (`watching`): its hanging up drops the work, which the guard records as
    // interrupted (499; in the audit log too).
    let answer = 'answer: {
        if let Some(p) = auth {
            let cert = guard
                .ctx
                .conn
                .tls
                .as_ref()
                .and_then(|t| t.client_cert_sha256.clone());
            let check = rt.auth.check_rule(
                p.rule.rule(&rt),
                &p.authorization,
                p.query.as_deref(),
                cert.as_deref(),
            );
            let Some(checked) = watching(io, buf, std::pin::pin!(check)).await else {
                return false;
            };
            match checked {
                Ok(caller) => {
                    if let (Some(c), Work::Proxy { req, .. }) = (&caller, &mut work) {
                        let mut fields = Vec::new();
                        headers::caller_fields(c, |name, v| {
                            put(&mut fields, name.as_bytes(), v.as_bytes())
                        });
                        req.head.splice(p.caller_at..p.caller_at, fields);
                    }
                    guard.ctx.caller = caller;
                    if let (RuleOf::Route(route), Work::Proxy { req, .. }) = (&p.rule, &work) {
                        past_auth(&rt, &mut guard.ctx, *route, &req.body);
                    }
                }
                Err(e) if matches!(work, Work::Lookup { .. }) => {
                    guard.armed = false;
                    return whole(
                        &rt,
                        &mut guard.ctx,
                        Err(e),
                        io,
                        false,
                        close,
                        closing,
                        &mut open,
                    )
                    .await;
                }
                Err(e) => break 'answer Err(e),
            }
        }
        let (pool, req) = match &work {
            Work::Proxy { pool, req } => (pool, req),
            Work::Lookup { lookup, key } => {
                // As `local::lookup` answers once its auth stage has passed.
                let answer = crate::cache::serve::answer(lookup, key.as_deref(), None, false);
                let Some(r) = watching(io, buf, std::pin::pin!(answer)).await else {
                    return false;
                };
                guard.armed = false;
                let r = r.map(|mut rsp| {
                    rsp.headers_mut()
                        .insert(headers::X_REQUEST_ID.clone(), guard.ctx.request_id.clone());
                    rsp
                });
                return whole(&rt, &mut guard.ctx, r, io, false, close, closing, &mut open).await;
            }
        };
        let sent = Instant::now();
        let Some(answer) = watching(io, buf, std::pin::pin!(pool.send_raw(req))).await else {
            // The client went away: `guard` records the request as interrupted.
            return false;
        };
        guard.ctx.upstream_us = Some(sent.elapsed().as_micros() as u64);
        answer
    };
    let Work::Proxy { req, .. } = work else {
        unreachable!("a lookup is answered above, refused or not")
    };
    guard.armed = false;
    let ctx = &mut guard.ctx;
    let answer = match answer {
        Ok(a) if a.status == 101 || http::StatusCode::from_u16(a.status).is_err() => {
            ctx.endpoint = Some(a.endpoint.label.clone());
            ctx.attempts = a.attempts;
            Err(GatewayError::new(
                ErrorKind::BadGateway,
                "bad_upstream_upgrade",
                "the upstream switched to a protocol the request did not offer",
            ))
        }
        other => other,
    };
    let a = match answer {
        Ok(a) => a,
        Err(e) => {
            return whole(
                &rt,
                ctx,
                Err(e),
                io,
                req.head_only,
                close,
                closing,
                &mut open,
            )
            .await;
        }
    };
    ctx.endpoint = Some(a.endpoint.label.clone());
    ctx.attempts = a.attempts;
    crate::observe::record_status(&rt, ctx, a.status);
    let closing = close || closing.load(Ordering::Relaxed);
    let head = response_head(&rt, ctx, &a, closing);
    let tap = rt
        .audit
        .as_ref()
        .map(|au| audit_stage::fast_path_tap(au, ctx, a.status));
    open.responding();
    relay(io, buf, a, head, exchanges, tap).await && io.flush().await.is_ok() && !closing
}

/// Answers with a whole response — an error, or a lookup's answer — as the full path's
/// `handle` does: through `respond::finish`, `observe` and the audit stage (the body is
/// whole: its record goes now), then written with hyper's framing. Whether the
/// connection goes on.
#[allow(clippy::too_many_arguments)]
async fn whole<I>(
    rt: &Runtime,
    ctx: &mut RequestCtx,
    result: Result<Response<Body>, GatewayError>,
    io: &mut ConnIo<I>,
    head_only: bool,
    close: bool,
    closing: &AtomicBool,
    open: &mut Open,
) -> bool
where
    I: AsyncWrite + Unpin,
{
    let mut rsp = respond::finish(rt, ctx, result);
    crate::observe::record(rt, ctx, &rsp);
    if let Some(a) = &rt.audit {
        rsp = match audit_stage::record_streamed(a, rt, ctx, rsp) {
            audit_stage::Streamed::Sent(r) => r,
            // Not for the routes taken here (`fast_path_records`); kept right all the
            // same.
            audit_stage::Streamed::Waits(pending, r) => {
                Box::pin(audit_stage::record(a, ctx, *pending, r)).await
            }
        };
    }
    open.responding();
    // A response that says it closes the connection (`respond::finish` says so for a
    // 400 or 413) closes it, as hyper's server does.
    let closing = close
        || closing.load(Ordering::Relaxed)
        || rsp
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    // Flushed: a TLS stream may hold the last records until asked.
    write_whole(io, rsp, head_only, closing).await && io.flush().await.is_ok() && !closing
}

/// Awaits `fut` while watching the client's side as hyper's server does mid-message:
/// while nothing of the client's is buffered, a read that brings bytes keeps them (a
/// pipelined request, for later) and ends the watch; one that finds the connection
/// closed or broken means the client went away: None, and `fut` is dropped. Without
/// readiness the read is no system call.
///
/// `fut` is pinned where the caller made it: moving a future as large as an upstream
/// exchange into this one would copy it on every request.
async fn watching<I, F>(
    io: &mut ConnIo<I>,
    buf: &mut ReadBuf,
    mut fut: std::pin::Pin<&mut F>,
) -> Option<F::Output>
where
    I: AsyncRead + Unpin,
    F: std::future::Future,
{
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(cx) {
            return std::task::Poll::Ready(Some(v));
        }
        if buf.start == buf.end {
            let mut rb = tokio::io::ReadBuf::new(&mut buf.data[buf.end..]);
            match std::pin::Pin::new(&mut *io).poll_read(cx, &mut rb) {
                std::task::Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                    buf.end += rb.filled().len();
                }
                std::task::Poll::Ready(_) => return std::task::Poll::Ready(None),
                std::task::Poll::Pending => {}
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Writes a whole response (from `respond::finish`) with hyper's framing.
async fn write_whole<I>(
    io: &mut ConnIo<I>,
    rsp: Response<Body>,
    head_only: bool,
    close: bool,
) -> bool
where
    I: AsyncWrite + Unpin,
{
    // Whole by construction (errors and lookup answers are `Body::full`).
    debug_assert!(rsp.body().replayable().is_some());
    let body = rsp.body().replayable().unwrap_or_default();
    let mut out = Vec::with_capacity(256 + body.len());
    status_line(&mut out, rsp.status().as_u16(), b"");
    // In hyper's order: the response's fields, its `connection: close`, the length,
    // the date.
    for (k, v) in rsp.headers() {
        if k != header::CONTENT_LENGTH && k != header::CONNECTION {
            put(&mut out, k.as_str().as_bytes(), v.as_bytes());
        }
    }
    if close {
        put(&mut out, b"connection", b"close");
    }
    let mut n = itoa::Buffer::new();
    put(&mut out, b"content-length", n.format(body.len()).as_bytes());
    if !rsp.headers().contains_key(header::DATE) {
        put_date(&mut out);
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(&body);
    }
    io.write_all(&out).await.is_ok()
}

/// The status line; `reason` is the upstream's phrase (kept, as hyper keeps it), or
/// empty for the standard one.
fn status_line(out: &mut Vec<u8>, status: u16, reason: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(n.format(status).as_bytes());
    out.push(b' ');
    if reason.is_empty() {
        let standard = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        out.extend_from_slice(standard.as_bytes());
    } else {
        out.extend_from_slice(reason);
    }
    out.extend_from_slice(b"\r\n");
}

/// `Date`, as hyper's server adds it: formatted once a second per thread.
fn put_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs || text.is_empty() {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        put(out, b"date", text.as_bytes());
    });
}

/// The response head for the client, as `respond::upstream` and hyper's server make it.
fn response_head(rt: &Runtime, ctx: &RequestCtx, a: &RawAnswer, close: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.head_len + 128);
    status_line(&mut out, a.status, a.reason());
    // Fields named in `Connection` are hop-by-hop too.
    let mut named: Vec<&[u8]> = Vec::new();
    let mut via: Vec<u8> = Vec::new();
    let mut has_date = false;
    for i in 0..a.fields.len() {
        let (name, value) = a.field(i);
        if name.eq_ignore_ascii_case(b"connection") {
            named.extend(
                value
                    .split(|&b| b == b',')
                    .map(<[u8]>::trim_ascii)
                    .filter(|t| !t.is_empty()),
            );
        }
    }
    for i in 0..a.fields.len() {
        let (name, value) = a.field(i);
        // Hop-by-hop fields go; the request id and the length are the gateway's own.
        let hop = headers::is_hop_by_hop_name(name)
            || name.eq_ignore_ascii_case(b"x-request-id")
            || name.eq_ignore_ascii_case(b"content-length")
            || named.iter().any(|n| name.eq_ignore_ascii_case(n));
        if hop {
            continue;
        }
        if name.eq_ignore_ascii_case(b"via") {
            let v = value.trim_ascii();
            if !v.is_empty() {
                via.extend_from_slice(v);
                via.extend_from_slice(b", ");
            }
            continue;
        }
        has_date |= name.eq_ignore_ascii_case(b"date");
        put_lower(&mut out, name, value);
    }
    via.extend_from_slice(if a.minor == 0 { b"1.0 " } else { b"1.1 " });
    via.extend_from_slice(rt.config.server.via_name.as_str().as_bytes());
    put(&mut out, b"via", &via);
    put(&mut out, b"x-request-id", ctx.request_id.as_bytes());
    if !has_date {
        put_date(&mut out);
    }
    match a.framing {
        Framing::Length(n) => {
            let mut b = itoa::Buffer::new();
            put(&mut out, b"content-length", b.format(n).as_bytes());
        }
        Framing::Chunked | Framing::Close => put(&mut out, b"transfer-encoding", b"chunked"),
        // HEAD and 304 keep the upstream's length (there is no body to derive it
        // from); 204 has none.
        Framing::None if a.status != 204 => {
            for i in 0..a.fields.len() {
                let (name, value) = a.field(i);
                if name.eq_ignore_ascii_case(b"content-length") {
                    put(&mut out, b"content-length", value);
                    break;
                }
            }
        }
        Framing::None => {}
    }
    if close {
        put(&mut out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Sends the head and relays the body; gives the upstream connection back when its
/// response was read to the end and it stays open. False when the client connection
/// must end.
async fn relay<I>(
    io: &mut ConnIo<I>,
    // The client's read buffer: the client is watched while the upstream's body is
    // awaited, as hyper's server watches it while it sends one.
    cbuf: &mut ReadBuf,
    a: RawAnswer,
    mut out: Vec<u8>,
    exchanges: &Exchanges,
    // The audit record's tap: fed the body as it goes out, finished at its end, and
    // dropped (cut short) if the body ends early, as the full path's would be.
    mut tap: Option<crate::body::Tap>,
) -> bool
where
    I: AsyncRead + AsyncWrite + Unpin + Send,
{
    let RawAnswer {
        mut conn,
        pool,
        framing,
        keep_alive,
        mut buf,
        head_len,
        status,
        guard,
        ..
    } = a;
    let head_only = framing == Framing::None && !matches!(status, 204 | 304);
    // The body bytes read with the head are moved to the front.
    buf.drain(..head_len);
    let mut filled = buf.len();
    if buf.capacity() < READ_CHUNK {
        buf.reserve(READ_CHUNK - buf.len());
    }
    // Reads more of the upstream's body into `buf[at..]` (into spare capacity: no
    // zeroing); 0 at its end.
    macro_rules! feed {
        ($data:expr) => {
            if let Some(t) = &mut tap {
                t.update_slice($data);
            }
        };
    }
    // The body's last bytes, known to be the last (a body read whole in one shot).
    macro_rules! feed_last {
        ($data:expr) => {
            if let Some(t) = &mut tap {
                t.finish_with($data);
            }
        };
    }
    // The body's end is known (before its last bytes are written, as hyper's server
    // polls the last frame before it writes it).
    macro_rules! finish {
        () => {
            if let Some(t) = &mut tap {
                t.finish();
            }
        };
    }
    // A client that goes away meanwhile ends the relay (its record cut short).
    macro_rules! read_more {
        ($at:expr) => {{
            buf.truncate($at);
            exchanges.body_waiting.store(true, Ordering::Relaxed);
            let r = watching(io, cbuf, std::pin::pin!(conn.read_buf(&mut buf))).await;
            exchanges.body_waiting.store(false, Ordering::Relaxed);
            match r {
                Some(r) => r,
                None => return false,
            }
        }};
    }
    let clean = match framing {
        // After a HEAD the connection is not used again: an upstream that sends a body
        // anyway would have its body read as the next request's answer.
        Framing::None => filled == 0 && status != 101 && !head_only,
        Framing::Length(n) => {
            let first = (filled as u64).min(n) as usize;
            out.extend_from_slice(&buf[..first]);
            if first as u64 == n && n > 0 {
                feed_last!(&buf[..first]);
            } else {
                feed!(&buf[..first]);
            }
            let extra = filled > first;
            if io.write_all(&out).await.is_err() {
                return false;
            }
            let mut left = n - first as u64;
            while left > 0 {
                let got = match read_more!(0) {
                    Ok(0) | Err(_) => return false,
                    Ok(got) => got,
                };
                let take = (got as u64).min(left) as usize;
                if take as u64 == left {
                    feed_last!(&buf[..take]);
                } else {
                    feed!(&buf[..take]);
                }
                if io.write_all(&buf[..take]).await.is_err() {
                    return false;
                }
                left -= take as u64;
                if take < got {
                    // Bytes after the body: the connection is not reusable.
                    drop(conn);
                    drop(guard);
                    return true;
                }
            }
            !extra
        }
        Framing::Close => {
            let mut end = false;
            let mut data = filled;
            loop {
                if data > 0 {
                    chunk(&mut out, &buf[..data]);
                    feed!(&buf[..data]);
                }
                if end {
                    finish!();
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                if !out.is_empty() && io.write_all(&out).await.is_err() {
                    return false;
                }
                out.clear();
                if end {
                    break;
                }
                match read_more!(0) {
                    Ok(0) => end = true,
                    Ok(n) => data = n,
                    Err(_) => return false,
                }
                if end {
                    data = 0;
                }
            }
            false
        }
        Framing::Chunked => {
            // Decodes the upstream's chunks and writes them framed anew (extensions
            // and trailers are not passed on, as hyper's server would not).
            let mut pos = 0usize;
            // Bytes of the current chunk's data still to come.
            let mut in_chunk: u64 = 0;
            let mut after_data = false;
            let mut trailers = false;
            loop {
                // Take what the buffer holds.
                loop {
                    if in_chunk > 0 {
                        let take = ((filled - pos) as u64).min(in_chunk) as usize;
                        if take == 0 {
                            break;
                        }
                        out.extend_from_slice(&buf[pos..pos + take]);
                        feed!(&buf[pos..pos + take]);
                        pos += take;
                        in_chunk -= take as u64;
                        if in_chunk == 0 {
                            out.extend_from_slice(b"\r\n");
                            after_data = true;
                        }
                        continue;
                    }
                    if after_data {
                        if filled - pos < 2 {
                            break;
                        }
                        if &buf[pos..pos + 2] != b"\r\n" {
                            return false;
                        }
                        pos += 2;
                        after_data = false;
                        continue;
                    }
                    if trailers {
                        let Some(eol) = buf[pos..filled].windows(2).position(|w| w == b"\r\n")
                        else {
                            break;
                        };
                        pos += eol + 2;
                        if eol == 0 {
                            // The end of the body.
                            finish!();
                            out.extend_from_slice(b"0\r\n\r\n");
                            if io.write_all(&out).await.is_err() {
                                return false;
                            }
                            drop(guard);
                            if pos == filled && keep_alive {
                                pool.checkin_raw(conn);
                            }
                            return true;
                        }
                        continue;
                    }
                    match chunk_size(&buf[pos..filled]) {
                        Ok(Some((used, 0))) => {
                            pos += used;
                            trailers = true;
                        }
                        Ok(Some((used, size))) => {
                            pos += used;
                            in_chunk = size;
                            let _ = write_hex(&mut out, size);
                        }
                        Ok(None) => break,
                        Err(()) => return false,
                    }
                }
                if !out.is_empty() {
                    if io.write_all(&out).await.is_err() {
                        return false;
                    }
                    out.clear();
                }
                // Keep the unread tail, and read more after it.
                buf.copy_within(pos..filled, 0);
                filled -= pos;
                pos = 0;
                if filled >= buf.capacity() {
                    // A chunk-size line longer than the buffer.
                    return false;
                }
                match read_more!(filled) {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => filled += n,
                }
            }
        }
    };
    if let Framing::None = framing {
        if io.write_all(&out).await.is_err() {
            return false;
        }
    }
    drop(guard);
    if clean && keep_alive {
        pool.checkin_raw(conn);
    }
    true
}

/// A chunk-size line (RFC 9112 §7.1): one to sixteen hex digits, then optionally
/// spaces or tabs and `;` extensions, then CRLF; no CR or LF anywhere else. Returns
/// the bytes it took and the size; None while the line is incomplete. Stricter than
/// `httparse::parse_chunk_size`, which takes a line without digits as size 0 (the
/// end of the body) — a framing an upstream could end a body early with.
fn chunk_size(b: &[u8]) -> Result<Option<(usize, u64)>, ()> {
    const MAX_LINE: usize = 4096;
    let Some(eol) = b.iter().position(|&c| c == b'\n') else {
        return if b.len() >= MAX_LINE {
            Err(())
        } else {
            Ok(None)
        };
    };
    if eol == 0 || b[eol - 1] != b'\r' {
        return Err(());
    }
    let line = &b[..eol - 1];
    let digits = line.iter().take_while(|c| c.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 || line.contains(&b'\r') {
        return Err(());
    }
    let rest = &line[digits..];
    let rest = &rest[rest
        .iter()
        .take_while(|&&c| c == b' ' || c == b'\t')
        .count()..];
    if !rest.is_empty() && rest[0] != b';' {
        return Err(());
    }
    let hex = std::str::from_utf8(&line[..digits]).map_err(|_| ())?;
    let size = u64::from_str_radix(hex, 16).map_err(|_| ())?;
    Ok(Some((eol + 1, size)))
}

fn write_hex(out: &mut Vec<u8>, n: u64) -> std::fmt::Result {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(18);
    write!(s, "{n:x}\r\n")?;
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// One chunk of a re-chunked body.
fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    let _ = write_hex(out, data.len() as u64);
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::chunk_size;

    #[test]
    fn chunk_size_lines_are_read_strictly() {
        assert_eq!(chunk_size(b"5\r\nhello"), Ok(Some((3, 5))));
        assert_eq!(chunk_size(b"1aF;name=v\r\n"), Ok(Some((12, 0x1af))));
        assert_eq!(chunk_size(b"5 \t;x\r\n"), Ok(Some((7, 5))));
        assert_eq!(chunk_size(b"0\r\n\r\n"), Ok(Some((3, 0))));
        assert_eq!(chunk_size(b"5"), Ok(None));
        assert_eq!(chunk_size(b"5;ext"), Ok(None));
        // No digits is not "size 0" (the end of the body): it is an error.
        assert_eq!(chunk_size(b"\r\n"), Err(()));
        assert_eq!(chunk_size(b";x\r\n"), Err(()));
        // Bare LF, CR inside the line, junk after the digits, too many digits.
        assert_eq!(chunk_size(b"5\n"), Err(()));
        assert_eq!(chunk_size(b"5;a\rb\r\n"), Err(()));
        assert_eq!(chunk_size(b"5x\r\n"), Err(()));
        assert_eq!(chunk_size(b"11111111111111111\r\n"), Err(()));
        assert_eq!(chunk_size(&[b'1'; 5000]), Err(()));
    }
}
