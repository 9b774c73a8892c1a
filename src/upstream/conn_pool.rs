//! A lean HTTP/1.1 connection pool for one upstream endpoint.
//!
//! Built directly on `hyper::client::conn::http1` so that the hot path is: pop an idle
//! sender from a LIFO list, hand hyper the request, push the sender back. There is no
//! per-request task, timer, connector clone or key hashing (the costs of
//! `hyper_util::client::legacy::Client` that this replaces).
//!
//! # How a connection gets back into the pool
//!
//! An HTTP/1 `SendRequest` accepts a new request only once the connection task has
//! finished reading the previous response body; hyper signals that by flipping the
//! sender to "ready" (`is_ready()`), and it does so from inside the connection task's
//! own `poll`, because the readiness flag is raised by the request receiver that the
//! connection owns. That gives a cheap hand-back protocol with no extra task:
//!
//! * every connection has a `Slot` shared by the requester and the connection task;
//! * after the response head arrives, the requester locks the slot and either returns
//!   the sender to the idle list at once (already ready: typical for small bodies, which
//!   hyper reads in the same poll as the head) or parks it in the slot;
//! * after every poll of the connection, the connection task looks at the slot and
//!   moves a parked sender that has become ready into the idle list.
//!
//! Because the ready flag is raised before the connection task locks the slot, and the
//! requester checks the flag while holding the same lock, one of the two always sees
//! the other's write: a parked sender cannot be forgotten.
//!
//! # Retries
//!
//! A pooled connection may have been closed by the server while idle. If hyper notices
//! before writing anything it hands the request back (`TrySendError::take_message`),
//! and the request is sent once more on a fresh connection. Failures after the request
//! may have been written are reported as [`SendError::Request`]; the caller decides
//! whether the method may be repeated.

use crate::body::Body;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Tunables of one endpoint's pool.
#[derive(Clone)]
pub struct PoolSettings {
    /// Bound on name lookup + TCP connect + TLS handshake of a new connection.
    pub connect_timeout: Duration,
    /// An idle connection unused for this long is closed.
    pub idle_timeout: Duration,
    /// At most this many idle connections are kept; extra ones are closed when they
    /// become idle. Zero disables reuse.
    pub max_idle: usize,
    /// TLS client config and the name to verify. ALPN is forced to `http/1.1`.
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// Set `TCP_NODELAY` on new connections.
    pub nodelay: bool,
}

/// Where the endpoint is.
#[derive(Clone, Debug)]
pub enum Target {
    Addr(SocketAddr),
    /// `host:port`, resolved with `tokio::net::lookup_host` on every new connection
    /// (so DNS changes are picked up); addresses are tried in order.
    HostPort(String),
}

impl From<SocketAddr> for Target {
    fn from(a: SocketAddr) -> Self {
        Target::Addr(a)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Addr(a) => a.fmt(f),
            Target::HostPort(h) => f.write_str(h),
        }
    }
}

/// Why [`ConnPool::send`] failed.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made (resolve, TCP, TLS, timeout), or a new connection
    /// closed before the request was written. Nothing reached the upstream, so any
    /// method may be retried.
    Connect(io::Error),
    /// The request was handed to a connection and failed; it may have been (partly)
    /// sent and processed.
    Request(hyper::Error),
}

impl SendError {
    /// True when nothing was sent.
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }
}

impl fmt::Display for SendError {
    // The inner error is left to `source()` so that chain printers do not repeat it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Connect(_) => f.write_str("could not connect to the upstream"),
            SendError::Request(_) => f.write_str("the upstream request failed"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(e) => Some(e),
            SendError::Request(e) => Some(e),
        }
    }
}

/// Connection pool for one endpoint. Cloning is cheap and shares the pool; idle
/// connections are closed when the last clone is dropped.
#[derive(Clone)]
pub struct ConnPool {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    nodelay: bool,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    builder: http1::Builder,
    /// Ready connections, oldest first: checkout pops the newest (LIFO keeps the set
    /// of warm connections small and lets surplus ones age out), and because entries
    /// are pushed in time order the expired ones always form a prefix.
    idle: Mutex<Vec<Idle>>,
    /// Connections of the HTTP/1 fast path (`pipeline::fast`), which speaks HTTP/1.1 on
    /// them itself: oldest first, as `idle`.
    raw_idle: Mutex<Vec<RawIdle>>,
    /// Whether the background sweep task has been started (lazily, from the first
    /// connect, so that `new` does not need a runtime).
    sweeper_started: AtomicBool,
    #[cfg(test)]
    unsent_retries: std::sync::atomic::AtomicUsize,
}

struct Idle {
    conn: Pooled,
    /// When it went idle, on [`crate::clock::mono_ms`] (idle timeouts are seconds;
    /// that clock's millisecond ticks are plenty, and it is cheaper to read).
    since_ms: u64,
}

struct RawIdle {
    stream: Stream,
    since_ms: u64,
}

/// A sender plus the slot of its connection (needed to park it again).
struct Pooled {
    sender: http1::SendRequest<Body>,
    slot: Arc<Slot>,
}

/// Per-connection meeting point of the requester and the connection task.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    /// A sender waiting for its response body to be read before it is reusable.
    parked: Option<http1::SendRequest<Body>>,
    /// Set by the connection task when it ends; a sender released afterwards is
    /// dropped instead of parked.
    closed: bool,
}

/// Lock ignoring poisoning: no critical section here can leave the data half-updated.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

const HTTP11: &[u8] = b"http/1.1";

impl ConnPool {
    pub fn new(target: impl Into<Target>, settings: PoolSettings) -> ConnPool {
        let tls = settings.tls.map(|(cfg, name)| {
            // Only HTTP/1.1 is spoken on these connections, so that is all we offer;
            // a shared config set up for h2 is copied rather than changed.
            let cfg = if cfg.alpn_protocols.len() == 1 && cfg.alpn_protocols[0] == HTTP11 {
                cfg
            } else {
                let mut c = (*cfg).clone();
                c.alpn_protocols = vec![HTTP11.to_vec()];
                Arc::new(c)
            };
            (tokio_rustls::TlsConnector::from(cfg), name)
        });
        ConnPool {
            inner: Arc::new(Inner {
                target: target.into(),
                connect_timeout: settings.connect_timeout,
                idle_timeout: settings.idle_timeout,
                max_idle: settings.max_idle,
                nodelay: settings.nodelay,
                tls,
                builder: http1::Builder::new(),
                idle: Mutex::new(Vec::new()),
                raw_idle: Mutex::new(Vec::new()),
                sweeper_started: AtomicBool::new(false),
                #[cfg(test)]
                unsent_retries: std::sync::atomic::AtomicUsize::new(0),
            }),
        }
    }

    pub fn target(&self) -> &Target {
        &self.inner.target
    }

    /// Number of idle connections currently pooled, of both kinds (hyper's and the
    /// fast path's; closed ones not yet noticed included).
    pub fn idle_count(&self) -> usize {
        // One lock at a time (see `checkin_raw`).
        let idle = lock(&self.inner.idle).len();
        idle + lock(&self.inner.raw_idle).len()
    }

    /// Sends a request and resolves with the response head; the body streams from the
    /// connection. An absolute-form URI is reduced to origin-form; headers (including
    /// `Host`) are sent exactly as given. No timeout is applied beyond the connect
    /// timeout: the caller bounds the whole exchange.
    //
    // Written as a plain fn returning an `async move` block rather than an `async fn`:
    // an `async fn` keeps its argument and a moved copy of it in its state, doubling
    // the ~300-byte request in a future the caller moves on every request.
    pub fn send(
        &self,
        mut req: Request<Body>,
    ) -> impl Future<Output = Result<Response<Incoming>, SendError>> + Send + '_ {
        to_origin_form(req.uri_mut());
        async move {
            // One loop with a single await on hyper keeps this future small (it is moved
            // into the caller's state machine on every request): at most two turns, a
            // pooled connection and then a fresh one.
            let mut fresh = false;
            loop {
                let pooled = if fresh { None } else { self.inner.checkout() };
                let mut conn = match pooled {
                    Some(c) => c,
                    None => {
                        fresh = true;
                        // Boxed: connecting (resolve, TCP, TLS, timeout) is a large
                        // future that would otherwise be inlined into every `send`
                        // future (~2 KiB instead of ~0.7 KiB).
                        Box::pin(self.inner.connect()).await?
                    }
                };
                let mut err = match conn.sender.try_send_request(req).await {
                    Ok(rsp) => {
                        self.inner.release(conn);
                        return Ok(rsp);
                    }
                    Err(e) => e,
                };
                // The connection is unusable; dropping it lets its task end.
                drop(conn);
                match err.take_message() {
                    // A pooled connection was already dead (typically closed by the server
                    // while idle) and hyper gave the request back untouched: one more go on
                    // a fresh connection is safe for any method.
                    Some(r) if !fresh => {
                        #[cfg(test)]
                        self.inner.unsent_retries.fetch_add(1, Ordering::Relaxed);
                        fresh = true;
                        req = r;
                    }
                    // Even a new connection closed before the request was written: nothing
                    // was sent, so report it like a connect failure.
                    Some(_) => {
                        return Err(SendError::Connect(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            err.into_error(),
                        )))
                    }
                    None => return Err(SendError::Request(err.into_error())),
                }
            }
        }
    }

    /// A connection for the HTTP/1 fast path, which speaks HTTP/1.1 on it directly:
    /// the newest idle one that has not expired and shows no sign of having been
    /// closed by its peer, else a new one (bounded by the connect timeout). The flag
    /// says whether it was used before: a request that finds a reused connection
    /// closed under it may be sent again on a new one.
    pub async fn checkout_raw(&self) -> Result<(Stream, bool), SendError> {
        let now = crate::clock::mono_ms();
        loop {
            let Some(mut i) = lock(&self.inner.raw_idle).pop() else {
                break;
            };
            if !self.inner.idle_too_long(i.since_ms, now) && !i.stream.peer_closed() {
                return Ok((i.stream, true));
            }
        }
        Ok((self.open_raw().await?, false))
    }

    /// A new connection for the fast path.
    pub async fn open_raw(&self) -> Result<Stream, SendError> {
        self.inner.open_timed().await
    }

    /// Gives a fast-path connection back after a complete exchange (its response
    /// read to the end, and the upstream not closing it); beyond `max_idle` idle
    /// connections of both kinds it closes.
    pub fn checkin_raw(&self, stream: Stream) {
        // The other set's length is read first and its lock let go: the two locks are
        // never held together, so neither order can deadlock. Two check-ins racing may
        // pass the bound by one each.
        let others = lock(&self.inner.idle).len();
        let mut idle = lock(&self.inner.raw_idle);
        if idle.len() + others < self.inner.max_idle {
            idle.push(RawIdle {
                stream,
                since_ms: crate::clock::mono_ms(),
            });
        }
    }

    /// Closes every idle connection (e.g. when the endpoint is removed).
    pub fn clear_idle(&self) {
        let drained = std::mem::take(&mut *lock(&self.inner.idle));
        drop(drained);
        let raw = std::mem::take(&mut *lock(&self.inner.raw_idle));
        drop(raw);
    }
}

impl Inner {
    fn expired(&self, i: &Idle, now_ms: u64) -> bool {
        self.idle_too_long(i.since_ms, now_ms)
    }

    /// Whether a connection idle since `since_ms` has passed the idle timeout.
    fn idle_too_long(&self, since_ms: u64, now_ms: u64) -> bool {
        u128::from(now_ms.saturating_sub(since_ms)) >= self.idle_timeout.as_millis()
    }

    /// Takes the most recently used live connection, dropping expired and closed ones.
    fn checkout(&self) -> Option<Pooled> {
        let mut idle = lock(&self.idle);
        let oldest = idle.first()?;
        let now = crate::clock::mono_ms();
        if self.expired(oldest, now) {
            // Rare path; dropping a sender only flags its connection task, so doing
            // it under the lock is cheap.
            let n = idle.partition_point(|i| self.expired(i, now));
            idle.drain(..n);
        }
        while let Some(i) = idle.pop() {
            if !i.conn.sender.is_closed() {
                return Some(i.conn);
            }
        }
        None
    }

    /// Called with the response head in hand: the connection goes back to the idle
    /// list now if hyper already accepts a new request on it, else it waits in its
    /// slot until the connection task sees the body finished.
    fn release(&self, conn: Pooled) {
        let Pooled { sender, slot } = conn;
        let sender = {
            let mut st = lock(&slot.state);
            if st.closed || sender.is_closed() {
                None
            } else if sender.is_ready() {
                Some(sender)
            } else {
                // Checked under the slot lock: see the module docs for why this
                // cannot miss the readiness signal.
                st.parked = Some(sender);
                return;
            }
        };
        if let Some(sender) = sender {
            self.put_idle(Pooled { sender, slot });
        }
    }

    fn put_idle(&self, conn: Pooled) {
        let rejected = {
            // `max_idle` bounds both sets together (see `checkin_raw`).
            let others = lock(&self.raw_idle).len();
            let mut idle = lock(&self.idle);
            if idle.len() + others < self.max_idle {
                // Timestamp taken under the lock so that the list stays sorted.
                idle.push(Idle {
                    conn,
                    since_ms: crate::clock::mono_ms(),
                });
                None
            } else {
                Some(conn)
            }
        };
        // Dropped outside the lock: this closes the connection.
        drop(rejected);
    }

    /// Drops expired and closed idle connections (run by the background sweeper, so
    /// that an endpoint that sees no traffic does not hold sockets open forever).
    fn sweep(&self) {
        let mut idle = lock(&self.idle);
        let now = crate::clock::mono_ms();
        let n = idle.partition_point(|i| self.expired(i, now));
        idle.drain(..n);
        idle.retain(|i| !i.conn.sender.is_closed());
        drop(idle);
        let mut raw = lock(&self.raw_idle);
        let n = raw.partition_point(|i| self.idle_too_long(i.since_ms, now));
        raw.drain(..n);
        raw.retain_mut(|i| !i.stream.peer_closed());
    }

    async fn connect(self: &Arc<Self>) -> Result<Pooled, SendError> {
        let io = self.open_timed().await?;
        self.attach(io).await
    }

    /// A new connection within the connect timeout (the sweeper started first).
    async fn open_timed(self: &Arc<Self>) -> Result<Stream, SendError> {
        self.start_sweeper();
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        match tokio::time::timeout_at(deadline, self.open(deadline)).await {
            Ok(r) => r.map_err(SendError::Connect),
            Err(_) => Err(SendError::Connect(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {} timed out", self.target),
            ))),
        }
    }

    /// Runs the HTTP/1 handshake (no I/O for HTTP/1) and spawns the connection task.
    async fn attach(self: &Arc<Self>, io: Stream) -> Result<Pooled, SendError> {
        let (sender, conn) = self
            .builder
            .handshake::<_, Body>(TokioIo::new(io))
            .await
            .map_err(|e| SendError::Connect(io::Error::other(e)))?;
        let slot = Arc::new(Slot::default());
        let task_slot = slot.clone();
        // Weak, so that pooled connections do not keep the pool alive (and so keep
        // themselves open) after the last `ConnPool` is gone.
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            {
                // With upgrades, so that a `101 Switching Protocols` hands the socket
                // over to the tunnel instead of closing it.
                let mut conn = std::pin::pin!(conn.with_upgrades());
                // The connection's own error is not interesting here: whoever is
                // waiting on a response or reading a body receives it from hyper.
                let _ = poll_fn(|cx| {
                    let r = conn.as_mut().poll(cx);
                    if r.is_pending() {
                        task_slot.hand_back_if_ready(&pool);
                    }
                    r
                })
                .await;
                // `conn` is dropped here, before `closed` is set, so any sender
                // released after this point also reports `is_closed()`.
            }
            let parked = {
                let mut st = lock(&task_slot.state);
                st.closed = true;
                st.parked.take()
            };
            drop(parked);
        });
        Ok(Pooled { sender, slot })
    }

    /// Opens a connection to the target by `deadline` (the caller's bound). A name's
    /// addresses are tried in turn, each with an equal share of the time left, so an
    /// unreachable first address (an IPv6 one on an IPv4-only network) does not take
    /// all of it from a working second.
    async fn open(&self, deadline: tokio::time::Instant) -> io::Result<Stream> {
        let tcp = match &self.target {
            Target::Addr(a) => TcpStream::connect(*a).await?,
            Target::HostPort(hp) => {
                let mut last = None;
                let mut found = None;
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host(hp.as_str()).await?.collect();
                for (k, addr) in addrs.iter().enumerate() {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let share = left / (addrs.len() - k) as u32;
                    match tokio::time::timeout(share, TcpStream::connect(addr)).await {
                        Ok(Ok(s)) => {
                            found = Some(s);
                            break;
                        }
                        Ok(Err(e)) => last = Some(e),
                        Err(_) => {
                            last = Some(io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!("connecting to {addr} timed out"),
                            ))
                        }
                    }
                }
                match found {
                    Some(s) => s,
                    None => {
                        return Err(last.unwrap_or_else(|| {
                            io::Error::new(io::ErrorKind::NotFound, format!("{hp}: no address"))
                        }))
                    }
                }
            }
        };
        if self.nodelay {
            tcp.set_nodelay(true)?;
        }
        match &self.tls {
            None => Ok(Stream::Plain(tcp)),
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await?;
                Ok(Stream::Tls(Box::new(tls)))
            }
        }
    }

    fn start_sweeper(self: &Arc<Self>) {
        if self.sweeper_started.load(Ordering::Relaxed)
            || self.sweeper_started.swap(true, Ordering::Relaxed)
        {
            return;
        }
        let every =
            (self.idle_timeout / 2).clamp(Duration::from_millis(50), Duration::from_secs(30));
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(p) = pool.upgrade() else { return };
                p.sweep();
            }
        });
    }
}

impl Slot {
    /// Run by the connection task after each poll: moves a parked sender that hyper
    /// now reports ready (or closed) out of the slot.
    fn hand_back_if_ready(self: &Arc<Self>, pool: &Weak<Inner>) {
        let sender = {
            let mut st = lock(&self.state);
            match &st.parked {
                Some(s) if s.is_ready() || s.is_closed() => st.parked.take(),
                _ => return,
            }
        };
        if let Some(sender) = sender.filter(|s| !s.is_closed()) {
            if let Some(pool) = pool.upgrade() {
                pool.put_idle(Pooled {
                    sender,
                    slot: self.clone(),
                });
            }
        }
    }
}

/// Rewrites an absolute-form URI to origin-form; anything else is left alone.
fn to_origin_form(uri: &mut Uri) {
    if uri.scheme().is_none() {
        return;
    }
    let pq = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *uri = Uri::from(pq);
}

/// The transport under a connection: one concrete type keeps the connection task
/// monomorphic (the match per read/write is negligible).
pub enum Stream {
    Plain(TcpStream),
    // Boxed: a TLS session is ~1 KiB and plain connections should not pay for it.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    #[cfg(test)]
    Mem(tokio::io::DuplexStream),
}

impl Stream {
    /// Whether an idle connection's peer has closed it (or sent bytes nobody asked
    /// for, which makes it as unusable). A plain connection is asked without a system
    /// call unless the reactor has seen it become readable; a TLS one by one poll of
    /// its read side. A connection closed after the check is found so by the request's
    /// write (sent again on a new one) or read (a failed attempt, `upstream::raw`).
    fn peer_closed(&mut self) -> bool {
        match self {
            Stream::Plain(s) => {
                let mut b = [0u8; 1];
                !matches!(s.try_read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            // One poll, with a waker that does nothing: anything but "not yet" (a
            // record, a close_notify, EOF, an error) makes the connection unusable.
            Stream::Tls(s) => {
                let mut b = [0u8; 1];
                let mut rb = ReadBuf::new(&mut b);
                let mut cx = Context::from_waker(std::task::Waker::noop());
                Pin::new(s.as_mut()).poll_read(&mut cx, &mut rb).is_ready()
            }
            #[cfg(test)]
            Stream::Mem(_) => false,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            #[cfg(test)]
            Stream::Mem(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            #[cfg(test)]
            Stream::Mem(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            #[cfg(test)]
            Stream::Mem(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    // hyper picks its write strategy (writev or flatten) from this.
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
            #[cfg(test)]
            Stream::Mem(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            #[cfg(test)]
            Stream::Mem(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            #[cfg(test)]
            Stream::Mem(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body::Body as HttpBody;
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;
    use tokio::net::TcpListener;

    /// How the test upstream answers.
    #[derive(Clone, Default)]
    struct Behaviour {
        delay: Duration,
        /// Answer with `Connection: close` (hyper then closes after the response).
        close: bool,
        /// Body chunks; `["hello"]` when empty.
        chunks: Vec<Bytes>,
        /// Pause before every chunk after the first.
        chunk_delay: Duration,
    }

    /// Response body of the test upstream: chunks, optionally spaced out in time.
    struct TestBody {
        /// Remaining chunks, last one first.
        chunks: Vec<Bytes>,
        delay: Duration,
        first: bool,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    }

    impl HttpBody for TestBody {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
            if self.chunks.is_empty() {
                return Poll::Ready(None);
            }
            if !self.first && !self.delay.is_zero() {
                let d = self.delay;
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(d)));
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.sleep = None;
            }
            self.first = false;
            let chunk = self.chunks.pop().unwrap_or_default();
            Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
        }

        fn size_hint(&self) -> http_body::SizeHint {
            let n = self.chunks.iter().map(|c| c.len() as u64).sum();
            http_body::SizeHint::with_exact(n)
        }
    }

    #[derive(Default)]
    struct ServerState {
        behaviour: Behaviour,
        accepted: AtomicUsize,
        open: AtomicUsize,
        conns: Mutex<Vec<tokio::task::AbortHandle>>,
        /// (request target, Host header) of every request.
        seen: Mutex<Vec<(String, Option<String>)>>,
        alpn: Mutex<Vec<Option<Vec<u8>>>>,
    }

    struct Server {
        addr: SocketAddr,
        state: Arc<ServerState>,
    }

    /// Counts a server connection as open until its task ends (or is aborted).
    struct OpenGuard(Arc<ServerState>);

    impl Drop for OpenGuard {
        fn drop(&mut self) {
            self.0.open.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl Server {
        async fn start(behaviour: Behaviour, tls: Option<Arc<rustls::ServerConfig>>) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let state = Arc::new(ServerState {
                behaviour,
                ..Default::default()
            });
            let st = state.clone();
            let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    st.accepted.fetch_add(1, Ordering::SeqCst);
                    st.open.fetch_add(1, Ordering::SeqCst);
                    let guard = OpenGuard(st.clone());
                    let st2 = st.clone();
                    let acceptor = acceptor.clone();
                    let task = tokio::spawn(async move {
                        let _guard = guard;
                        match acceptor {
                            None => serve_conn(TokioIo::new(tcp), st2).await,
                            Some(a) => {
                                let Ok(tls) = a.accept(tcp).await else { return };
                                let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                                lock(&st2.alpn).push(alpn);
                                serve_conn(TokioIo::new(tls), st2).await
                            }
                        }
                    });
                    lock(&st.conns).push(task.abort_handle());
                }
            });
            Server { addr, state }
        }

        fn accepted(&self) -> usize {
            self.state.accepted.load(Ordering::SeqCst)
        }

        fn open(&self) -> usize {
            self.state.open.load(Ordering::SeqCst)
        }

        /// Closes every server-side connection, as a server's keep-alive timeout would.
        fn close_all(&self) {
            for h in lock(&self.state.conns).drain(..) {
                h.abort();
            }
        }
    }

    async fn serve_conn<I>(io: I, st: Arc<ServerState>)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let st = st.clone();
            async move {
                let host = req
                    .headers()
                    .get(http::header::HOST)
                    .map(|h| h.to_str().unwrap().to_string());
                lock(&st.seen).push((req.uri().to_string(), host));
                let b = st.behaviour.clone();
                if !b.delay.is_zero() {
                    tokio::time::sleep(b.delay).await;
                }
                let mut chunks = if b.chunks.is_empty() {
                    vec![Bytes::from_static(b"hello")]
                } else {
                    b.chunks.clone()
                };
                chunks.reverse();
                let mut rsp = Response::new(TestBody {
                    chunks,
                    delay: b.chunk_delay,
                    first: true,
                    sleep: None,
                });
                if b.close {
                    rsp.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, Infallible>(rsp)
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .await;
    }

    fn settings() -> PoolSettings {
        PoolSettings {
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(30),
            max_idle: 128,
            tls: None,
            nodelay: true,
        }
    }

    /// Absolute-form on purpose: the pool must send origin-form and keep this Host.
    fn get(path: &str) -> Request<Body> {
        Request::get(format!("http://ignored.example{path}"))
            .header(http::header::HOST, "front.example")
            .body(Body::empty())
            .unwrap()
    }

    async fn read_body(rsp: Response<Incoming>) -> Bytes {
        let mut body = rsp.into_body();
        let mut out = Vec::new();
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            if let Ok(d) = frame.unwrap().into_data() {
                out.extend_from_slice(&d);
            }
        }
        Bytes::from(out)
    }

    async fn get_ok(pool: &ConnPool, path: &str) {
        let rsp = pool.send(get(path)).await.unwrap();
        assert_eq!(rsp.status(), 200);
        assert_eq!(read_body(rsp).await, "hello");
    }

    /// Waits (bounded) for background connection tasks to reach a state.
    async fn settle(mut cond: impl FnMut() -> bool) -> bool {
        for _ in 0..400 {
            if cond() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cond()
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let srv = Server::start(Behaviour::default(), None).await;
        // Host:port form, resolved at connect time.
        let target = Target::HostPort(format!("127.0.0.1:{}", srv.addr.port()));
        let pool = ConnPool::new(target, settings());
        for i in 0..20 {
            get_ok(&pool, &format!("/x?i={i}")).await;
        }
        assert_eq!(srv.accepted(), 1);
        assert_eq!(pool.idle_count(), 1);
        let seen = lock(&srv.state.seen).clone();
        assert_eq!(seen.len(), 20);
        assert_eq!(
            seen[7],
            ("/x?i=7".to_string(), Some("front.example".to_string()))
        );
    }

    async fn concurrent_waves(pool: &ConnPool, srv: &Server, tasks: usize) {
        for wave in 0..2 {
            let mut set = tokio::task::JoinSet::new();
            for i in 0..tasks {
                let p = pool.clone();
                set.spawn(async move { get_ok(&p, &format!("/c/{i}")).await });
            }
            while let Some(r) = set.join_next().await {
                r.unwrap();
            }
            let opened = srv.accepted();
            assert!(
                opened >= 1 && opened <= tasks,
                "wave {wave}: {opened} connections"
            );
            // Every connection still open must come back to the pool.
            assert!(
                settle(|| pool.idle_count() == srv.open()).await,
                "wave {wave}: idle {} vs open {}",
                pool.idle_count(),
                srv.open()
            );
        }
    }

    #[tokio::test]
    async fn concurrent_requests_current_thread() {
        let b = Behaviour {
            delay: Duration::from_millis(20),
            ..Default::default()
        };
        let srv = Server::start(b, None).await;
        let pool = ConnPool::new(srv.addr, settings());
        concurrent_waves(&pool, &srv, 50).await;
        // The second wave found all 50 connections idle and opened none.
        assert_eq!(srv.accepted(), 50);
        assert_eq!(pool.idle_count(), 50);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_multi_thread() {
        let b = Behaviour {
            delay: Duration::from_millis(20),
            ..Default::default()
        };
        let srv = Server::start(b, None).await;
        let pool = ConnPool::new(srv.addr, settings());
        concurrent_waves(&pool, &srv, 50).await;
    }

    /// Many short requests across threads: no connection may get stuck in its slot.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_connection_is_lost_under_churn() {
        let srv = Server::start(Behaviour::default(), None).await;
        let pool = ConnPool::new(srv.addr, settings());
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let p = pool.clone();
            set.spawn(async move {
                for i in 0..200 {
                    get_ok(&p, &format!("/s/{i}")).await;
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
        assert!(settle(|| pool.idle_count() == srv.open()).await);
        // Reuse happened: far fewer connections than the 3200 requests.
        assert!(srv.accepted() <= 64, "{} connections", srv.accepted());
    }

    /// A body still streaming when the head is returned: the sender is parked and the
    /// connection task hands it back once the body is done.
    #[tokio::test]
    async fn slow_body_connection_is_handed_back_by_its_task() {
        let b = Behaviour {
            chunks: vec![Bytes::from_static(b"hel"), Bytes::from_static(b"lo")],
            chunk_delay: Duration::from_millis(30),
            ..Default::default()
        };
        let srv = Server::start(b, None).await;
        let pool = ConnPool::new(srv.addr, settings());
        for i in 0..3 {
            let rsp = pool.send(get(&format!("/slow/{i}"))).await.unwrap();
            // Parked in its slot, not idle, while the body is being streamed.
            assert_eq!(pool.idle_count(), 0);
            assert_eq!(read_body(rsp).await, "hello");
            assert!(settle(|| pool.idle_count() == 1).await);
        }
        assert_eq!(srv.accepted(), 1);
    }

    /// A response body dropped unread: hyper closes (or drains) the connection; the
    /// pool must neither hand out a broken connection nor lose a good one.
    #[tokio::test]
    async fn unread_body_does_not_poison_the_pool() {
        let b = Behaviour {
            chunks: vec![Bytes::from(vec![b'x'; 16 * 1024]); 64],
            ..Default::default()
        };
        let srv = Server::start(b, None).await;
        let pool = ConnPool::new(srv.addr, settings());
        let rsp = pool.send(get("/big")).await.unwrap();
        assert_eq!(rsp.status(), 200);
        drop(rsp);
        let rsp = pool.send(get("/big")).await.unwrap();
        assert_eq!(read_body(rsp).await.len(), 64 * 16 * 1024);
        assert!(srv.accepted() <= 2);
        assert!(settle(|| pool.idle_count() == srv.open()).await);
    }

    #[tokio::test]
    async fn connection_close_responses_are_not_reused() {
        let b = Behaviour {
            close: true,
            ..Default::default()
        };
        let srv = Server::start(b, None).await;
        let pool = ConnPool::new(srv.addr, settings());
        for i in 0..10 {
            get_ok(&pool, &format!("/close/{i}")).await;
        }
        assert_eq!(srv.accepted(), 10);
        assert!(settle(|| srv.open() == 0).await);
        // Closed connections are dropped, never handed out again.
        assert!(
            settle(|| {
                lock(&pool.inner.idle)
                    .iter()
                    .all(|i| i.conn.sender.is_closed())
            })
            .await
        );
        assert_eq!(pool.inner.checkout().map(|_| ()), None);
    }

    #[tokio::test]
    async fn connection_closed_by_server_while_idle_is_skipped() {
        let srv = Server::start(Behaviour::default(), None).await;
        let pool = ConnPool::new(srv.addr, settings());
        get_ok(&pool, "/1").await;
        srv.close_all();
        assert!(settle(|| srv.open() == 0).await);
        // Give the client's connection task time to read the EOF.
        tokio::time::sleep(Duration::from_millis(20)).await;
        get_ok(&pool, "/2").await;
        assert_eq!(srv.accepted(), 2);
    }

    /// The race the retry exists for: the pooled connection is dead but its task has
    /// not noticed yet, so the request is queued on it and hyper hands it back unsent.
    /// An in-memory transport makes the ordering deterministic.
    #[tokio::test]
    async fn stale_pooled_connection_is_retried_on_a_fresh_one() {
        let srv = Server::start(Behaviour::default(), None).await;
        let pool = ConnPool::new(srv.addr, settings());
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        let planted = pool.inner.attach(Stream::Mem(client_io)).await.unwrap();
        pool.inner.put_idle(planted);
        // The "server" closes the idle connection; no await since, so the client's
        // connection task has not run and the sender still looks open.
        drop(server_io);
        let rsp = pool.send(get("/after-close")).await.unwrap();
        assert_eq!(rsp.status(), 200);
        assert_eq!(read_body(rsp).await, "hello");
        assert_eq!(pool.inner.unsent_retries.load(Ordering::Relaxed), 1);
        assert_eq!(srv.accepted(), 1);
    }

    #[tokio::test]
    async fn a_post_is_retried_too_when_nothing_was_sent() {
        let srv = Server::start(Behaviour::default(), None).await;
        let pool = ConnPool::new(srv.addr, settings());
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        let planted = pool.inner.attach(Stream::Mem(client_io)).await.unwrap();
        pool.inner.put_idle(planted);
        drop(server_io);
        let req = Request::post("/submit")
            .header(http::header::HOST, "front.example")
            .body(Body::full(Bytes::from_static(b"{\"a\":1}")))
            .unwrap();
        let rsp = pool.send(req).await.unwrap();
        assert_eq!(rsp.status(), 200);
        assert_eq!(lock(&srv.state.seen)[0].0, "/submit");
    }

    #[tokio::test]
    async fn connect_refused_is_a_connect_error() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let pool = ConnPool::new(addr, settings());
        let err = pool.send(get("/")).await.unwrap_err();
        assert!(err.is_connect(), "{err:?}");
        let src = std::error::Error::source(&err).unwrap();
        let io = src.downcast_ref::<io::Error>().unwrap();
        assert_eq!(io.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn unresolvable_host_is_a_connect_error() {
        let pool = ConnPool::new(
            Target::HostPort("no-such-host.invalid:80".into()),
            settings(),
        );
        let err = pool.send(get("/")).await.unwrap_err();
        assert!(err.is_connect(), "{err:?}");
    }

    #[tokio::test]
    async fn idle_connections_expire() {
        let srv = Server::start(Behaviour::default(), None).await;
        let mut s = settings();
        s.idle_timeout = Duration::from_millis(150);
        let pool = ConnPool::new(srv.addr, s);
        get_ok(&pool, "/1").await;
        assert_eq!(pool.idle_count(), 1);
        assert_eq!(srv.open(), 1);
        // The sweeper closes it with no further traffic...
        assert!(settle(|| pool.idle_count() == 0 && srv.open() == 0).await);
        // ...and the next request opens a new one.
        get_ok(&pool, "/2").await;
        assert_eq!(srv.accepted(), 2);
    }

    #[tokio::test]
    async fn expired_connections_are_dropped_on_checkout() {
        let srv = Server::start(Behaviour::default(), None).await;
        let mut s = settings();
        s.idle_timeout = Duration::from_millis(100);
        let pool = ConnPool::new(srv.addr, s);
        get_ok(&pool, "/1").await;
        // Blocking sleep: neither the sweeper nor anything else runs meanwhile.
        std::thread::sleep(Duration::from_millis(150));
        assert!(pool.inner.checkout().is_none());
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn max_idle_caps_the_pool() {
        let b = Behaviour {
            delay: Duration::from_millis(20),
            ..Default::default()
        };
        let srv = Server::start(b, None).await;
        let mut s = settings();
        s.max_idle = 3;
        let pool = ConnPool::new(srv.addr, s);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let p = pool.clone();
            set.spawn(async move { get_ok(&p, "/m").await });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
        assert_eq!(srv.accepted(), 10);
        assert!(settle(|| srv.open() == 3).await, "open {}", srv.open());
        assert_eq!(pool.idle_count(), 3);
    }

    #[tokio::test]
    async fn max_idle_bounds_both_kinds_of_idle_connection_together() {
        let srv = Server::start(Behaviour::default(), None).await;
        let mut s = settings();
        s.max_idle = 3;
        let pool = ConnPool::new(srv.addr, s);
        for _ in 0..3 {
            pool.checkin_raw(pool.open_raw().await.unwrap());
        }
        assert_eq!(pool.idle_count(), 3);
        // A full set of the fast path's keeps hyper's connection out: it closes after
        // its exchange.
        get_ok(&pool, "/1").await;
        assert_eq!(srv.accepted(), 4);
        assert!(settle(|| srv.open() == 3).await, "open {}", srv.open());
        assert_eq!(pool.idle_count(), 3);
        // And the other way round: with one of hyper's idle, two of the fast path's fit.
        let mut raw = Vec::new();
        for _ in 0..3 {
            let (c, reused) = pool.checkout_raw().await.unwrap();
            assert!(reused);
            raw.push(c);
        }
        get_ok(&pool, "/2").await;
        get_ok(&pool, "/3").await;
        assert_eq!(srv.accepted(), 5);
        assert!(settle(|| pool.idle_count() == 1).await);
        for c in raw {
            pool.checkin_raw(c);
        }
        assert_eq!(pool.idle_count(), 3);
        assert!(settle(|| srv.open() == 3).await, "open {}", srv.open());
    }

    #[tokio::test]
    async fn dropping_the_pool_closes_idle_connections() {
        let srv = Server::start(Behaviour::default(), None).await;
        let pool = ConnPool::new(srv.addr, settings());
        get_ok(&pool, "/1").await;
        assert_eq!(srv.open(), 1);
        drop(pool);
        assert!(settle(|| srv.open() == 0).await);
    }

    fn tls_pair(client_alpn: &[&[u8]]) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = ck.cert.der().clone();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(
            rustls_pki_types::PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()),
        );
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        // The server would prefer h2 if the client offered it.
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = client_alpn.iter().map(|p| p.to_vec()).collect();
        (Arc::new(server), Arc::new(client))
    }

    #[tokio::test]
    async fn tls_with_self_signed_certificate() {
        // A client config shared with an h2 user: the pool must still offer only
        // http/1.1.
        let (server_cfg, client_cfg) = tls_pair(&[b"h2", b"http/1.1"]);
        let srv = Server::start(Behaviour::default(), Some(server_cfg)).await;
        let mut s = settings();
        s.tls = Some((client_cfg, ServerName::try_from("localhost").unwrap()));
        let pool = ConnPool::new(srv.addr, s);
        for i in 0..5 {
            get_ok(&pool, &format!("/tls/{i}")).await;
        }
        assert_eq!(srv.accepted(), 1);
        assert_eq!(*lock(&srv.state.alpn), vec![Some(b"http/1.1".to_vec())]);
        assert_eq!(lock(&srv.state.seen)[4].0, "/tls/4");
    }

    #[tokio::test]
    async fn tls_with_untrusted_certificate_is_a_connect_error() {
        let (server_cfg, _) = tls_pair(&[]);
        let (_, other_client) = tls_pair(&[]);
        let srv = Server::start(Behaviour::default(), Some(server_cfg)).await;
        let mut s = settings();
        s.tls = Some((other_client, ServerName::try_from("localhost").unwrap()));
        let pool = ConnPool::new(srv.addr, s);
        let err = pool.send(get("/")).await.unwrap_err();
        assert!(err.is_connect(), "{err:?}");
        let chain = format!("{}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("certificate"), "{chain}");
    }

    #[test]
    fn origin_form() {
        let mut u: Uri = "http://a.example:8080/p/q?x=1".parse().unwrap();
        to_origin_form(&mut u);
        assert_eq!(u.to_string(), "/p/q?x=1");
        let mut u: Uri = "https://a.example".parse().unwrap();
        to_origin_form(&mut u);
        assert_eq!(u.to_string(), "/");
        let mut u: Uri = "/already?y".parse().unwrap();
        to_origin_form(&mut u);
        assert_eq!(u.to_string(), "/already?y");
    }
}
