//! The one body type that travels through the gateway, in both directions.
//!
//! An enum rather than a boxed trait object: the common cases (a streamed body from the
//! other side, a small buffered one, none) cost no allocation. A streamed request body
//! carries its byte cap, so an over-long chunked body fails with [`BodyTooLarge`]
//! wherever it is being read; a streamed response body can carry a guard that is
//! dropped when the body ends (used to count outstanding requests per endpoint).

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Raised when a streamed body exceeds its cap.
#[derive(Debug, thiserror::Error)]
#[error("body exceeds the limit of {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

/// A guard kept alive for as long as a body is being streamed, dropped at its end.
pub trait BodyGuard: Send + Sync {
    /// Told after each poll of the stream whether it is waiting on its source (`true`:
    /// the stream said `Pending`) or has just given a frame (`false`).
    fn polled(&self, _waiting: bool) {}
    /// Told when the stream's source fails (a client that went away mid-upload).
    fn failed(&self) {}
}

/// Watches a streamed body go by: counts its bytes and hashes them (SHA-256), and
/// reports both when the body ends — or, with no digest, when it is dropped before
/// its end (a client that went away, a failed upstream). Used by the audit stage.
///
/// One allocation holds the tap's state and its report closure (a fail-open audit
/// record's draft, on every proxied request).
pub struct Tap(Box<TapState<dyn Report>>);

/// The closure a [`Tap`] reports to, called at most once.
trait Report: Send + Sync {
    /// Not called yet.
    fn pending(&self) -> bool;
    fn report(&mut self, digest: Option<[u8; 32]>, bytes: u64);
}

struct Once<F>(Option<F>);

impl<F: FnOnce(Option<[u8; 32]>, u64) + Send + Sync> Report for Once<F> {
    fn pending(&self) -> bool {
        self.0.is_some()
    }

    fn report(&mut self, digest: Option<[u8; 32]>, bytes: u64) {
        if let Some(f) = self.0.take() {
            f(digest, bytes);
        }
    }
}

struct TapState<R: ?Sized> {
    hashed: Hashed,
    bytes: u64,
    report: R,
}

/// What a [`Tap`] has seen so far. Most bodies the gateway relays arrive in one chunk; that
/// chunk is kept (a reference count, not a copy) and hashed in one shot at the end, which
/// spares the streaming context's allocation and set-up. A second chunk starts the
/// streaming context.
enum Hashed {
    Nothing,
    One(Bytes),
    Streaming(aws_lc_rs::digest::Context),
}

impl Tap {
    pub fn new(done: impl FnOnce(Option<[u8; 32]>, u64) + Send + Sync + 'static) -> Tap {
        Tap(Box::new(TapState {
            hashed: Hashed::Nothing,
            bytes: 0,
            report: Once(Some(done)),
        }))
    }

    pub(crate) fn update(&mut self, data: &Bytes) {
        if data.is_empty() {
            return;
        }
        let t = &mut *self.0;
        if matches!(t.hashed, Hashed::Nothing) {
            t.bytes += data.len() as u64;
            t.hashed = Hashed::One(data.clone());
            return;
        }
        self.update_slice(data);
    }

    /// [`Tap::update`] for bytes the caller does not hold as `Bytes` (the HTTP/1 fast
    /// path's read buffer): hashed as they come, never copied.
    pub(crate) fn update_slice(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let t = &mut *self.0;
        t.bytes += data.len() as u64;
        match &mut t.hashed {
            Hashed::Streaming(ctx) => ctx.update(data),
            other => {
                let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
                if let Hashed::One(first) = other {
                    ctx.update(first);
                }
                ctx.update(data);
                *other = Hashed::Streaming(ctx);
            }
        }
    }

    /// The body's last bytes and its end at once: a body that is all in `data` is
    /// hashed in one shot.
    pub(crate) fn finish_with(&mut self, data: &[u8]) {
        let t = &mut *self.0;
        if matches!(t.hashed, Hashed::Nothing) && t.report.pending() {
            t.bytes += data.len() as u64;
            t.report.report(Some(sha256(data)), t.bytes);
            return;
        }
        self.update_slice(data);
        self.finish();
    }

    pub(crate) fn finish(&mut self) {
        let t = &mut *self.0;
        if !t.report.pending() {
            return;
        }
        let out = match std::mem::replace(&mut t.hashed, Hashed::Nothing) {
            Hashed::Nothing => sha256(&[]),
            Hashed::One(b) => sha256(&b),
            Hashed::Streaming(ctx) => {
                let mut out = [0u8; 32];
                out.copy_from_slice(ctx.finish().as_ref());
                out
            }
        };
        t.report.report(Some(out), t.bytes);
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let t = &mut *self.0;
        t.report.report(None, t.bytes);
    }
}

/// SHA-256 of a buffered body.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

pub enum Body {
    Empty,
    Full(Option<Bytes>),
    Stream {
        inner: Incoming,
        /// Bytes still allowed; `u64::MAX` for no cap.
        remaining: u64,
        limit: u64,
        guard: Option<Box<dyn BodyGuard>>,
        tap: Option<Tap>,
    },
}

impl Body {
    pub fn empty() -> Self {
        Body::Empty
    }

    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        if b.is_empty() {
            Body::Empty
        } else {
            Body::Full(Some(b))
        }
    }

    pub fn stream(inner: Incoming, limit: Option<u64>) -> Self {
        let limit = limit.unwrap_or(u64::MAX);
        Body::Stream {
            inner,
            remaining: limit,
            limit,
            guard: None,
            tap: None,
        }
    }

    /// Attaches a tap to a streamed body. A buffered body is reported at once.
    pub fn with_tap(mut self, t: Tap) -> Self {
        match &mut self {
            Body::Stream { tap, .. } => *tap = Some(t),
            Body::Empty => {
                let mut t = t;
                t.finish();
            }
            Body::Full(b) => {
                let mut t = t;
                if let Some(b) = b {
                    t.update(b);
                }
                t.finish();
            }
        }
        self
    }

    pub fn with_guard(mut self, g: Box<dyn BodyGuard>) -> Self {
        if let Body::Stream { guard, .. } = &mut self {
            *guard = Some(g);
        }
        self
    }

    /// Whether the body can be sent again (for retries) without buffering.
    pub fn replayable(&self) -> Option<Bytes> {
        match self {
            Body::Empty => Some(Bytes::new()),
            Body::Full(b) => Some(b.clone().unwrap_or_default()),
            Body::Stream { .. } => None,
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream {
                inner,
                remaining,
                limit,
                guard,
                tap,
            } => match Pin::new(&mut *inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(mut frame))) => {
                    if let Some(g) = guard {
                        g.polled(false);
                    }
                    if let Some(d) = frame.data_ref() {
                        let n = d.len() as u64;
                        if n > *remaining {
                            return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                                limit: *limit,
                            }))));
                        }
                        *remaining -= n;
                        if let Some(t) = tap {
                            t.update(d);
                        }
                    } else if frame.is_trailers() {
                        // Trailers are cleaned as heads are (`sanitize_trailers`).
                        frame = match frame.into_trailers() {
                            Ok(mut t) => {
                                crate::pipeline::headers::sanitize_trailers(&mut t);
                                Frame::trailers(t)
                            }
                            Err(f) => f,
                        };
                        // Trailers are the last frame: the body is whole (readers stop
                        // at them, and a tap would otherwise be dropped unfinished).
                        guard.take();
                        if let Some(t) = tap {
                            t.finish();
                        }
                    }
                    // Readers stop polling once `is_end_stream` says so (bodies with a
                    // length), so the end is noticed here rather than on a final None.
                    if inner.is_end_stream() {
                        guard.take();
                        if let Some(t) = tap {
                            t.finish();
                        }
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    if let Some(g) = guard {
                        g.failed();
                    }
                    Poll::Ready(Some(Err(Box::new(e))))
                }
                Poll::Ready(None) => {
                    guard.take();
                    if let Some(t) = tap {
                        t.finish();
                    }
                    Poll::Ready(None)
                }
                Poll::Pending => {
                    if let Some(g) = guard {
                        g.polled(true);
                    }
                    Poll::Pending
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(b) => b.is_none(),
            Body::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Stream { inner, .. } => inner.size_hint(),
        }
    }
}

/// Whether an error chain contains [`BodyTooLarge`].
pub fn is_too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<BodyTooLarge>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Collects a body into memory, refusing more than `cap` bytes. The one place the
/// gateway buffers a whole body; stages that need the whole body call this.
pub async fn collect_capped(body: Body, cap: u64) -> Result<Bytes, BoxError> {
    use http_body_util::BodyExt;
    if let Some(b) = body.replayable() {
        if b.len() as u64 > cap {
            return Err(Box::new(BodyTooLarge { limit: cap }));
        }
        return Ok(b);
    }
    let limited = http_body_util::Limited::new(body, cap as usize);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => {
            if e.is::<http_body_util::LengthLimitError>() {
                Err(Box::new(BodyTooLarge { limit: cap }))
            } else {
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    type Seen = Arc<Mutex<Option<(Option<[u8; 32]>, u64)>>>;

    fn tap() -> (Tap, Seen) {
        let seen: Seen = Arc::default();
        let s = seen.clone();
        (
            Tap::new(move |d, n| *s.lock().unwrap() = Some((d, n))),
            seen,
        )
    }

    #[test]
    fn tap_digest_matches_whole_body_however_chunked() {
        let body: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        for cuts in [
            vec![],
            vec![0],
            vec![1],
            vec![64, 65],
            vec![0, 10, 10, 4999],
            vec![2500],
        ] {
            // Fed as `Bytes`, as slices (the fast path), and alternating the two.
            for way in 0..3 {
                let (mut t, seen) = tap();
                let mut at = 0;
                let mut parts = cuts.iter().copied().chain([body.len()]).enumerate();
                let mut part = parts.next();
                while let Some((i, c)) = part {
                    part = parts.next();
                    if way == 0 || (way == 2 && i % 2 == 0) {
                        t.update(&Bytes::copy_from_slice(&body[at..c]));
                        if part.is_none() {
                            t.finish();
                        }
                    } else if part.is_none() {
                        t.finish_with(&body[at..c]);
                    } else {
                        t.update_slice(&body[at..c]);
                    }
                    at = c;
                }
                let got = seen.lock().unwrap().take();
                assert_eq!(
                    got,
                    Some((Some(sha256(&body)), body.len() as u64)),
                    "cuts {cuts:?}, way {way}"
                );
            }
        }
        let (mut t, seen) = tap();
        t.finish();
        assert_eq!(seen.lock().unwrap().take(), Some((Some(sha256(b"")), 0)));
    }

    #[test]
    fn tap_dropped_before_the_end_reports_no_digest() {
        let (mut t, seen) = tap();
        t.update(&Bytes::from_static(b"partial"));
        drop(t);
        assert_eq!(seen.lock().unwrap().take(), Some((None, 7)));
    }
}
