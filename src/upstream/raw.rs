//! The upstream half of the HTTP/1 fast path (`pipeline::fast`): a request whose head
//! is already bytes is written to an endpoint's own keep-alive connection and the
//! response head is read back with `httparse`, with the pool's balancing, passive
//! ejection, circuit breaker, retry budget and deadline exactly as [`Pool::send`]
//! applies them. The response body is the caller's to relay (it holds the
//! connection and gives it back when the body has been read to its end).
//!
//! Only HTTP/1.1 pools without upstream credentials take this path (see
//! [`Pool::takes_raw`]); the request body is always in memory, so every attempt
//! may be sent again.

use super::conn_pool::{ConnPool, Stream};
use super::{DispatchError, Endpoint, Outstanding, Pool};
use crate::clock::mono_ms;
use crate::error::GatewayError;
use bytes::Bytes;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Most fields an upstream response head may have (hyper's client limit too).
const MAX_FIELDS: usize = 100;
/// Largest upstream response head read (about hyper's client's limit).
const MAX_HEAD: usize = 400 * 1024;
/// The read buffer's size, and the most read at once.
pub const READ_CHUNK: usize = 16 * 1024;

/// A request ready to be written: everything but `Host` and the blank line.
pub struct RawRequest {
    /// Request line and fields, each line ending in CRLF.
    pub head: Vec<u8>,
    /// The `Host` value; None: the endpoint's authority.
    pub host: Option<Bytes>,
    pub body: Bytes,
    /// Whether the request may be sent again after an attempt that reached the upstream.
    pub idempotent: bool,
    /// HEAD: the response has no body whatever its fields say.
    pub head_only: bool,
    /// Bounds every attempt, up to the response head.
    pub timeout: Duration,
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// An upstream's answer: its parsed head and the connection its body comes on.
pub struct RawAnswer {
    pub conn: Stream,
    /// Where `conn` goes back when its body has been read to the end.
    pub pool: ConnPool,
    pub status: u16,
    /// The reason phrase, as a range of `buf` (may be empty).
    pub reason: Range<usize>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// The bytes read: the head, then the start of the body (`head_len..`).
    pub buf: Vec<u8>,
    pub head_len: usize,
    /// The fields, as ranges of `buf` (name, value).
    pub fields: Vec<(Range<usize>, Range<usize>)>,
    pub framing: Framing,
    /// The upstream keeps the connection open after this response.
    pub keep_alive: bool,
    pub endpoint: Arc<Endpoint>,
    pub attempts: u32,
    /// Counts the request as outstanding on its endpoint until the body is relayed.
    pub guard: Outstanding,
}

impl RawAnswer {
    pub fn reason(&self) -> &[u8] {
        &self.buf[self.reason.clone()]
    }

    pub fn field(&self, i: usize) -> (&[u8], &[u8]) {
        let (n, v) = &self.fields[i];
        (&self.buf[n.clone()], &self.buf[v.clone()])
    }
}

/// One exchange's outcome before the pool's accounting.
struct Exchanged {
    conn: Stream,
    status: u16,
    reason: Range<usize>,
    minor: u8,
    buf: Vec<u8>,
    head_len: usize,
    fields: Vec<(Range<usize>, Range<usize>)>,
    framing: Framing,
    keep_alive: bool,
}

enum Failure {
    /// A reused connection turned out closed before any answer: the request may go
    /// again on a new one.
    Stale,
    Failed(DispatchError),
}

fn failed(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Failure {
    Failure::Failed(DispatchError {
        connect: false,
        timed_out: false,
        error: e.into(),
    })
}

impl Pool {
    /// Whether requests to this pool can take the fast path: HTTP/1.1 endpoints (the
    /// pool's own connections) and no credentials to obtain and inject.
    pub fn takes_raw(&self) -> bool {
        !self.cfg.http2 && self.credentials.get().is_none()
    }

    /// [`Pool::send`] for a request whose head is bytes: the same deadline, retries,
    /// breaker and ejection accounting.
    pub async fn send_raw(&self, req: &RawRequest) -> Result<RawAnswer, GatewayError> {
        let deadline = tokio::time::Instant::now() + req.timeout;
        let mut in_flight = None;
        match tokio::time::timeout_at(deadline, self.send_raw_inner(req, &mut in_flight)).await {
            Ok(r) => r,
            Err(_) => Err(self.deadline_passed(in_flight)),
        }
    }

    async fn send_raw_inner(
        &self,
        req: &RawRequest,
        in_flight: &mut Option<Arc<Endpoint>>,
    ) -> Result<RawAnswer, GatewayError> {
        let mut probe = self.admit(mono_ms())?;
        let max_attempts = self.cfg.retry.attempts.max(1);
        let mut last: Option<Arc<Endpoint>> = None;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let ep = self.pick_or_refuse(last.as_ref())?;
            let can_retry_more = attempt < max_attempts;
            ep.outstanding.fetch_add(1, Ordering::Relaxed);
            let guard = Outstanding(ep.clone());
            *in_flight = Some(ep.clone());
            let result = self.per_try(exchange_with(&ep, req)).await;
            *in_flight = None;
            match result {
                Ok(x) => {
                    let failed = matches!(x.status, 502..=504);
                    self.record(&ep, !failed);
                    if failed && self.may_retry(req.idempotent, can_retry_more) {
                        drop(guard);
                        last = Some(ep);
                        continue;
                    }
                    probe.record(!failed, &self.breaker);
                    let pool = ep.conn.clone().expect("takes_raw: an HTTP/1.1 pool");
                    return Ok(RawAnswer {
                        conn: x.conn,
                        pool,
                        status: x.status,
                        reason: x.reason,
                        minor: x.minor,
                        buf: x.buf,
                        head_len: x.head_len,
                        fields: x.fields,
                        framing: x.framing,
                        keep_alive: x.keep_alive,
                        endpoint: ep,
                        attempts: attempt,
                        guard,
                    });
                }
                Err(e) => {
                    drop(guard);
                    self.record(&ep, false);
                    if self.may_retry(e.connect || req.idempotent, can_retry_more) {
                        last = Some(ep);
                        continue;
                    }
                    probe.record(false, &self.breaker);
                    return Err(self.attempt_error(&ep, &e));
                }
            }
        }
    }
}

/// One attempt on one endpoint: a pooled connection, and a new one if that turns out
/// closed before it answered.
async fn exchange_with(ep: &Endpoint, req: &RawRequest) -> Result<Exchanged, DispatchError> {
    let pool = ep.conn.as_ref().ok_or_else(|| DispatchError {
        connect: false,
        timed_out: false,
        error: "not an HTTP/1.1 endpoint".into(),
    })?;
    let connect_error = |e| DispatchError {
        connect: true,
        timed_out: false,
        error: Box::new(e),
    };
    let mut out = Vec::with_capacity(req.head.len() + 64 + req.body.len());
    out.extend_from_slice(&req.head);
    out.extend_from_slice(b"host: ");
    match &req.host {
        Some(h) => out.extend_from_slice(h),
        None => out.extend_from_slice(ep.authority.as_str().as_bytes()),
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&req.body);
    let (conn, reused) = pool.checkout_raw().await.map_err(connect_error)?;
    match exchange(conn, &out, req, reused).await {
        Ok(x) => Ok(x),
        Err(Failure::Stale) => {
            let conn = pool.open_raw().await.map_err(connect_error)?;
            match exchange(conn, &out, req, false).await {
                Ok(x) => Ok(x),
                Err(Failure::Stale) => Err(DispatchError {
                    connect: false,
                    timed_out: false,
                    error: "the upstream closed the connection before answering".into(),
                }),
                Err(Failure::Failed(e)) => Err(e),
            }
        }
        Err(Failure::Failed(e)) => Err(e),
    }
}

async fn exchange(
    mut conn: Stream,
    out: &[u8],
    req: &RawRequest,
    reused: bool,
) -> Result<Exchanged, Failure> {
    // Flushed: a TLS stream may hold the last records until asked.
    if let Err(e) = async {
        conn.write_all(out).await?;
        conn.flush().await
    }
    .await
    {
        // A reused connection the upstream had closed: nothing of this request was
        // acted on. (One that takes the request and then closes is a failed attempt,
        // retried and accounted as any other.)
        return Err(if reused { Failure::Stale } else { failed(e) });
    }
    // Read into spare capacity (`read_buf`): a zeroed buffer would cost a memset of
    // its whole size on every exchange.
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut filled = 0usize;
    let mut start = 0usize;
    loop {
        if filled == buf.capacity() {
            if filled >= MAX_HEAD {
                return Err(failed("the upstream's response head is too large"));
            }
            buf.reserve(filled);
        }
        let n = conn.read_buf(&mut buf).await.map_err(failed)?;
        if n == 0 {
            return Err(failed(
                "the upstream closed the connection before its answer",
            ));
        }
        filled += n;
        loop {
            let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
            let mut rsp = httparse::Response::new(&mut fields);
            let len = match rsp.parse(&buf[start..filled]) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => break,
                Err(e) => return Err(failed(format!("invalid response head: {e}"))),
            };
            let status = rsp.code.unwrap_or(0);
            let minor = rsp.version.unwrap_or(1);
            if status < 100 {
                return Err(failed("invalid status code in the response"));
            }
            if (100..200).contains(&status) && status != 101 {
                // Interim responses (100, 103) are not passed on: the request had no
                // `Expect`, and the final answer follows.
                start += len;
                continue;
            }
            let base = buf.as_ptr() as usize;
            let at = |s: &[u8]| {
                let from = s.as_ptr() as usize - base;
                from..from + s.len()
            };
            let mut ranges = Vec::with_capacity(rsp.headers.len());
            let mut length: Option<Result<u64, ()>> = None;
            let mut chunked = None;
            let (mut asks_close, mut asks_keep_alive) = (false, false);
            for f in rsp.headers.iter() {
                let name = f.name.as_bytes();
                if name.eq_ignore_ascii_case(b"content-length") {
                    // A list of one repeated value counts as that value, as in hyper.
                    for v in f.value.split(|&b| b == b',') {
                        let v = std::str::from_utf8(v.trim_ascii())
                            .ok()
                            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                            .and_then(|v| v.parse::<u64>().ok())
                            .ok_or(());
                        length = match (length, v) {
                            (None, v) => Some(v),
                            (Some(Ok(a)), Ok(b)) if a == b => Some(Ok(a)),
                            _ => Some(Err(())),
                        };
                    }
                } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                    // Chunked only if it is the last coding of the last field.
                    let last = f.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
                    chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                } else if name.eq_ignore_ascii_case(b"connection") {
                    for t in f.value.split(|&b| b == b',') {
                        let t = t.trim_ascii();
                        asks_close |= t.eq_ignore_ascii_case(b"close");
                        asks_keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
                    }
                }
                ranges.push((at(name), at(f.value)));
            }
            if minor == 0 && chunked.is_some() {
                return Err(failed("Transfer-Encoding in an HTTP/1.0 response"));
            }
            // Once any field asks to close, the connection closes; HTTP/1.0 keeps it
            // only when asked to.
            let mut close = asks_close || (minor == 0 && !asks_keep_alive);
            let framing = if req.head_only || matches!(status, 101 | 204 | 304) {
                // No body, whatever the framing fields say (not even checked, as hyper).
                Framing::None
            } else {
                match (chunked, length) {
                    (Some(true), _) => Framing::Chunked,
                    (Some(false), _) => Framing::Close,
                    (None, Some(Ok(n))) => Framing::Length(n),
                    (None, Some(Err(()))) => {
                        return Err(failed("invalid Content-Length in the response"))
                    }
                    (None, None) => Framing::Close,
                }
            };
            if framing == Framing::Close {
                close = true;
            }
            let reason = match rsp.reason {
                Some(r) if !r.is_empty() => at(r.as_bytes()),
                _ => 0..0,
            };
            // The head is moved to the front so that ranges and the body start are
            // offsets of one buffer.
            if start > 0 {
                buf.copy_within(start..filled, 0);
                filled -= start;
                for (n, v) in &mut ranges {
                    *n = n.start - start..n.end - start;
                    *v = v.start - start..v.end - start;
                }
            }
            let reason = if reason.is_empty() {
                0..0
            } else {
                reason.start - start..reason.end - start
            };
            buf.truncate(filled);
            return Ok(Exchanged {
                conn,
                status,
                reason,
                minor,
                buf,
                head_len: len,
                fields: ranges,
                framing,
                keep_alive: !close,
            });
        }
    }
}
