//! Listeners: accepting connections, TLS, HTTP/1.1 and HTTP/2 (ALPN over TLS, h2c
//! with prior knowledge), connection limits, slow-client and idle timeouts, and
//! graceful drain on shutdown.
//!
//! An HTTP/1 connection is served by `pipeline::fast` until a request needs the full
//! path, then by hyper and `pipeline::handle` (the bytes read so far replayed to it);
//! one watchdog (`drive`) times both.
//!
//! Limits and timeouts are read from the config snapshot current when a connection
//! is accepted. Slow clients: the TLS handshake and protocol detection are bounded by
//! `header_read_timeout`, and so is each HTTP/1 request head, by the connection's
//! watchdog (`drive`; the bound also runs while a keep-alive connection waits for its
//! next request, so an idle HTTP/1 connection lasts at most min(`idle_timeout`,
//! `header_read_timeout`)). The watchdog also closes connections with no traffic and
//! no request in flight for `idle_timeout` (this is what bounds idle HTTP/2 ones).

pub mod tls;

use crate::config::ListenerConfig;
use crate::pipeline::headers::Forwarding;
use crate::runtime::Gateway;
use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

/// What later stages may know about the connection a request came on.
#[derive(Debug)]
pub struct ConnInfo {
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: Option<TlsInfo>,
    /// The forwarding fields for requests on this connection.
    pub forwarding: Forwarding,
    /// The tunnel an upgraded exchange became (see `pipeline::forward::tunnel`): the
    /// connection, with its place under `max_connections`, its gauge and the drain
    /// on shutdown, lasts until the tunnel ends, not only until the upgrade.
    pub tunnel: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ConnInfo {
    /// Waits for the connection's tunnel, if an exchange became one.
    async fn tunnel_ended(&self) {
        let tunnel = self.tunnel.lock().map(|mut t| t.take()).unwrap_or(None);
        if let Some(t) = tunnel {
            let _ = t.await;
        }
    }
}

/// The verified TLS facts of a connection.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    pub alpn: Option<Vec<u8>>,
    pub sni: Option<String>,
    /// base64url (no padding) SHA-256 of the verified client certificate's DER, the
    /// form RFC 8705 uses for `cnf.x5t#S256`. None without a client certificate.
    pub client_cert_sha256: Option<String>,
    /// The verified client certificate (DER), for later identity mapping.
    pub client_cert: Option<Arc<Vec<u8>>>,
}

struct BoundListener {
    name: Arc<str>,
    socket: TcpListener,
    tls: Option<Arc<tls::TlsState>>,
    limit: Arc<Semaphore>,
}

/// Sockets bound and ready; `run` serves them until shutdown.
pub struct Server {
    gw: Arc<Gateway>,
    listeners: Vec<BoundListener>,
    admin: Option<TcpListener>,
    pub addrs: Vec<(String, SocketAddr)>,
    pub admin_addr: Option<SocketAddr>,
    tls_states: Vec<Arc<tls::TlsState>>,
}

fn bind_socket(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.set_nodelay(true)?;
    sock.bind(addr)?;
    sock.listen(4096)
}

impl Server {
    pub async fn bind(gw: Arc<Gateway>) -> Result<Server, String> {
        let rt = gw.runtime();
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        let mut tls_states = Vec::new();
        for l in &rt.config.listeners {
            let socket = bind_socket(l.listen)
                .map_err(|e| format!("listeners {:?}: cannot bind {}: {e}", l.name, l.listen))?;
            let local = socket.local_addr().map_err(|e| e.to_string())?;
            let tls = match &l.tls {
                Some(t) => {
                    let st = tls::TlsState::new(t, l.http2)
                        .map_err(|e| format!("listeners {:?}: {e}", l.name))?;
                    st.watch();
                    tls_states.push(st.clone());
                    Some(st)
                }
                None => None,
            };
            addrs.push((l.name.clone(), local));
            listeners.push(BoundListener {
                name: Arc::from(l.name.as_str()),
                socket,
                tls,
                limit: Arc::new(Semaphore::new(l.max_connections)),
            });
        }
        let (admin, admin_addr) = match rt.config.admin.listen {
            Some(a) => {
                let s = bind_socket(a).map_err(|e| format!("admin: cannot bind {a}: {e}"))?;
                let local = s.local_addr().map_err(|e| e.to_string())?;
                (Some(s), Some(local))
            }
            None => (None, None),
        };
        Ok(Server {
            gw,
            listeners,
            admin,
            addrs,
            admin_addr,
            tls_states,
        })
    }

    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.addrs.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// Checks every listener's TLS files now (SIGHUP does this too).
    pub fn tls_handles(&self) -> Vec<Arc<tls::TlsState>> {
        self.tls_states.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting and lets in-flight
    /// requests finish for up to the drain timeout.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        // Every connection holds a sender; when all are gone the drain is complete.
        let (drain_tx, mut drain_rx) = mpsc::channel::<()>(1);
        let mut accept_tasks = Vec::new();
        for l in self.listeners {
            accept_tasks.push(tokio::spawn(accept_loop(
                self.gw.clone(),
                l,
                stop_rx.clone(),
                drain_tx.clone(),
            )));
        }
        let admin_task = self.admin.map(|a| {
            tokio::spawn(crate::admin::serve(
                self.gw.clone(),
                a,
                self.tls_states.clone(),
                stop_rx.clone(),
            ))
        });
        shutdown.await;
        tracing::info!("shutting down: no new connections, draining in-flight requests");
        self.gw.shutting_down.store(true, Ordering::Relaxed);
        let _ = stop_tx.send(true);
        let mut conns = Vec::new();
        for t in accept_tasks {
            if let Ok(set) = t.await {
                conns.push(set);
            }
        }
        drop(drain_tx);
        let drain = self.gw.runtime().config.server.drain_timeout;
        if tokio::time::timeout(drain, drain_rx.recv()).await.is_err() {
            tracing::warn!("drain timeout reached; closing remaining connections");
        }
        // Connections still open are closed now, not when the runtime goes: their
        // requests' response bodies are dropped here, so the audit records those
        // report on drop reach the audit log before the caller closes it.
        for mut set in conns {
            set.abort_all();
            while set.join_next().await.is_some() {}
        }
        // HTTP/2 streams run in tasks of their own; with their connections gone they
        // are reset and end (their requests' records submitted), which is waited for
        // here, briefly: a stage that ignores cancellation must not hold the exit.
        if tokio::time::timeout(Duration::from_secs(2), self.gw.h2_streams.idle())
            .await
            .is_err()
        {
            tracing::warn!("HTTP/2 streams still running after their connections closed");
        }
        if let Some(t) = admin_task {
            t.abort();
        }
    }
}

/// Accepts until `stop`; returns the connections' tasks, for `Server::run` to close
/// those still open at the drain timeout.
async fn accept_loop(
    gw: Arc<Gateway>,
    l: BoundListener,
    mut stop: watch::Receiver<bool>,
    drain: mpsc::Sender<()>,
) -> tokio::task::JoinSet<()> {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        // Ended connections are let go as we accept (a set keeps them until joined).
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = l.limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return conns },
            _ = stop.wait_for(|s| *s) => return conns,
        };
        let accepted = tokio::select! {
            r = l.socket.accept() => r,
            _ = stop.wait_for(|s| *s) => return conns,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, listener = &*l.name, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let gw = gw.clone();
        let name = l.name.clone();
        let tls = l.tls.clone();
        let stop = stop.clone();
        let drain = drain.clone();
        conns.spawn(async move {
            serve_conn(gw, name, tls, stream, peer, stop).await;
            drop(permit);
            drop(drain);
        });
    }
}

/// Counts an open connection in the `lienthong_connections` gauge while alive.
struct ConnGauge(metrics::Gauge);
impl ConnGauge {
    fn new(listener: &Arc<str>) -> ConnGauge {
        let g = metrics::gauge!("lienthong_connections", "listener" => listener.to_string());
        g.increment(1.0);
        ConnGauge(g)
    }
}
impl Drop for ConnGauge {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn serve_conn(
    gw: Arc<Gateway>,
    listener: Arc<str>,
    tls: Option<Arc<tls::TlsState>>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    let rt = gw.runtime();
    let Some(lcfg) = rt.listener(&listener).cloned() else {
        return;
    };
    drop(rt);
    let local = stream.local_addr().unwrap_or(peer);
    let _ = stream.set_nodelay(true);
    let _gauge = ConnGauge::new(&listener);
    let activity = Arc::new(Activity::new());
    match tls {
        Some(t) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(t.current());
            let hs = tokio::time::timeout(lcfg.header_read_timeout, acceptor.accept(stream)).await;
            let tls_stream = match hs {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    metrics::counter!("lienthong_tls_handshake_failures_total").increment(1);
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let (_, session) = tls_stream.get_ref();
            let cert = session
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec());
            let info = TlsInfo {
                alpn: session.alpn_protocol().map(<[u8]>::to_vec),
                sni: session.server_name().map(str::to_string),
                client_cert_sha256: cert.as_ref().map(|d| cert_thumbprint(d)),
                client_cert: cert.map(Arc::new),
            };
            let h2 = info.alpn.as_deref() == Some(b"h2");
            let conn = Arc::new(ConnInfo {
                listener,
                peer,
                local,
                tls: Some(info),
                forwarding: Forwarding::new(peer.ip(), true),
                tunnel: Default::default(),
            });
            let io = ConnIo::new(tls_stream, None, activity.clone());
            serve_http(gw, conn.clone(), &lcfg, io, h2, activity, stop).await;
            conn.tunnel_ended().await;
        }
        None => {
            let mut stream = stream;
            let (h2, prefix) = if lcfg.h2c {
                match tokio::time::timeout(lcfg.header_read_timeout, sniff_h2(&mut stream)).await {
                    Ok(Ok(x)) => x,
                    _ => return,
                }
            } else {
                (false, Bytes::new())
            };
            let conn = Arc::new(ConnInfo {
                listener,
                peer,
                local,
                tls: None,
                forwarding: Forwarding::new(peer.ip(), false),
                tunnel: Default::default(),
            });
            let io = ConnIo::new(stream, Some(prefix), activity.clone());
            serve_http(gw, conn.clone(), &lcfg, io, h2, activity, stop).await;
            conn.tunnel_ended().await;
        }
    }
}

/// base64url(SHA-256(DER)), no padding.
pub fn cert_thumbprint(der: &[u8]) -> String {
    use base64::Engine;
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d.as_ref())
}

/// Reads the first bytes to tell an HTTP/2 prior-knowledge preface from HTTP/1.
/// Returns the bytes read so they can be replayed to the chosen protocol.
async fn sniff_h2(stream: &mut TcpStream) -> io::Result<(bool, Bytes)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(H2_PREFACE.len());
    let mut chunk = [0u8; 24];
    loop {
        let want = H2_PREFACE.len() - buf.len();
        let n = stream.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf[..] != H2_PREFACE[..buf.len()] {
            return Ok((false, Bytes::from(buf)));
        }
        if buf.len() == H2_PREFACE.len() {
            return Ok((true, Bytes::from(buf)));
        }
    }
}

async fn serve_http<I>(
    gw: Arc<Gateway>,
    conn: Arc<ConnInfo>,
    l: &ListenerConfig,
    io: ConnIo<I>,
    h2: bool,
    activity: Arc<Activity>,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let exchanges = Arc::new(Exchanges::new(h2));
    let streams = gw.h2_streams.clone();
    let (gw2, conn2) = (gw.clone(), conn.clone());
    let svc = {
        let exchanges = exchanges.clone();
        service_fn(move |req| {
            let gw = gw.clone();
            let conn = conn.clone();
            let mut open = Open::new(exchanges.clone());
            async move {
                let rt = gw.runtime();
                let rsp = crate::pipeline::handle(rt, conn, req).await;
                open.responding();
                // The exchange stays open until its response body has been sent.
                Ok::<_, std::convert::Infallible>(rsp.map(|body| Tracked { body, open }))
            }
        })
    };
    let idle = l.idle_timeout;
    let io = TokioIo::new(io);
    if h2 {
        drop((gw2, conn2));
        let mut b = hyper::server::conn::http2::Builder::new(StreamExecutor(streams));
        b.timer(TokioTimer::new())
            .max_concurrent_streams(l.h2_max_concurrent_streams)
            .max_header_list_size(l.h2_max_header_list_bytes.saturating_mul(2))
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        let c = b.serve_connection(io, svc);
        // Idle means no stream for `idle`: bytes alone (PINGs, ours every 30 s and
        // their acknowledgements, or a client's) would keep it open for ever.
        drop(activity);
        drive(c, idle, None, exchanges, None, &mut stop, |c| {
            c.graceful_shutdown()
        })
        .await;
    } else {
        // The fast path first (`pipeline::fast`), under the same watchdog; hyper takes
        // the connection over, with the bytes read so far, at the first request that
        // needs the full path.
        let mut io = io.into_inner();
        let mut buf = crate::pipeline::fast::ReadBuf::new();
        let closing = AtomicBool::new(false);
        let fallback = AtomicBool::new(false);
        let head = Some(l.header_read_timeout);
        let fast = crate::pipeline::fast::serve(
            &gw2, &conn2, &mut io, &mut buf, &exchanges, &closing, &fallback,
        );
        drive(
            fast,
            idle,
            Some(activity.clone()),
            exchanges.clone(),
            head,
            &mut stop,
            |_| closing.store(true, Ordering::Relaxed),
        )
        .await;
        if !fallback.load(Ordering::Relaxed) {
            return;
        }
        io.unread(Bytes::copy_from_slice(buf.unread()));
        let io = TokioIo::new(io);
        // No timer for hyper: the header-read timeout is the watchdog's (`drive`), which
        // spares every request a tokio timer of its own.
        let mut b = hyper::server::conn::http1::Builder::new();
        b.header_read_timeout(None::<Duration>)
            .max_headers(parser_max_headers(l.max_headers))
            .max_header_size(l.max_header_bytes.saturating_mul(2))
            .keep_alive(true);
        let c = b.serve_connection(io, svc).with_upgrades();
        drive(c, idle, Some(activity), exchanges, head, &mut stop, |c| {
            c.graceful_shutdown()
        })
        .await;
    }
}

/// The number of request fields hyper's HTTP/1 parser accepts before it refuses a head
/// itself (a bare 431): above the listener's `max_headers`, so that the request path can
/// refuse the fields in between with its JSON `431 too_many_headers`. Up to 100 fields
/// hyper parses into arrays on the stack; above that it allocates two heap arrays for
/// every request head, and with mimalloc that cost a page taken from and given back to
/// the arena on every request: 2.7k instructions per proxied request (7%, callgrind).
/// So a limit under 100 gets exactly 100 here; a larger one gets twice itself and pays.
fn parser_max_headers(max_headers: usize) -> usize {
    const STACK_FIELDS: usize = 100;
    if max_headers < STACK_FIELDS {
        STACK_FIELDS
    } else {
        max_headers.saturating_mul(2)
    }
}

/// Runs a connection until it ends, asking it to shut down gracefully on gateway
/// shutdown or when it has been idle (no bytes, no request) for `idle`, and cutting
/// it off when `head` (HTTP/1's header-read timeout) has passed since its last
/// exchange ended, or since it began, without a new request head being complete.
/// That bound covers both a slow client's head and a keep-alive connection waiting
/// for its next request, as hyper's own header-read timer would; hyper's timer was a
/// tokio timer of its own per request (about 1.2k instructions each, callgrind),
/// where this one is the connection's single watchdog timer.
///
/// The connection future is polled on every wake-up of its task (a request, an
/// upstream answer, a body chunk); the shutdown signal and the idle timer only
/// when they may have fired. A `select!` would poll all three on every wake-up,
/// re-registering the timer's waker each time, and that cost ~0.2 µs per proxied
/// request. Their wakers stay registered between polls (each is the task's),
/// so a skipped poll misses nothing: the signal is looked at when its channel
/// has a new value, the timer when it has elapsed.
async fn drive<C, E>(
    conn: C,
    idle: Duration,
    // When bytes last moved (HTTP/1); None: idleness counts from the last exchange's
    // end instead (HTTP/2, whose PINGs move bytes on a connection nobody uses).
    activity: Option<Arc<Activity>>,
    exchanges: Arc<Exchanges>,
    head: Option<Duration>,
    stop: &mut watch::Receiver<bool>,
    shutdown: impl Fn(Pin<&mut C>),
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let idle_ms = idle.as_millis() as u64;
    let head_ms = head.map(|h| h.as_millis() as u64);
    // When the watchdog next has something to look at: the connection may have been
    // idle for `idle` since its last activity, or, with no exchange open, its next
    // head may be overdue. Heads that start later have later deadlines, so requests
    // coming and going never move the timer; it fires at most once per period.
    let last_activity = |now: u64| match &activity {
        Some(a) => a.moved(),
        None => exchanges.idle_since().unwrap_or(now),
    };
    // The next head is due `head` after the last exchange ended *and* its response was
    // written out: hyper ends an exchange when it has taken the whole body, which for a
    // body in one piece is before a slow reader has got much of it. (Only writes move
    // this: a client trickling bytes of a head cannot.)
    let head_since = |since: u64| match &activity {
        Some(a) => since.max(a.written.load(Ordering::Relaxed)),
        None => since,
    };
    // Draining, the idle deadline has been acted on: only the head's is left (else a
    // deadline in the past would fire the timer again at once, in a loop).
    let next_check = |draining: bool| {
        let now = crate::clock::mono_ms();
        let mut at = if draining {
            u64::MAX
        } else {
            last_activity(now) + idle_ms
        };
        if let Some(h) = head_ms {
            at = at.min(match exchanges.idle_since() {
                Some(since) => head_since(since) + h,
                None => now + h,
            });
        }
        // (Capped at a day: `at` may be "never".)
        tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(now).min(86_400_000))
    };
    let mut probe = stop.clone();
    let mut conn = std::pin::pin!(conn);
    let mut stopped = std::pin::pin!(stop.wait_for(|s| *s));
    let mut timer = std::pin::pin!(tokio::time::sleep_until(next_check(false)));
    let mut draining = false;
    // Set when the connection's idleness began a graceful shutdown: one that has not
    // ended `idle` later is closed (an HTTP/2 client holding a stream open with no
    // window, say, would hold it for ever).
    let mut idle_close_at: Option<u64> = None;
    let mut first = true;
    std::future::poll_fn(|cx| loop {
        if let Poll::Ready(r) = conn.as_mut().poll(cx) {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return Poll::Ready(());
        }
        // Draining, only the header-read timeout and an idle close's deadline are still
        // watched: a head that never completes is not an exchange to wait for.
        if draining && head_ms.is_none() && idle_close_at.is_none() {
            return Poll::Pending;
        }
        // Both side futures are polled on the first turn, to register.
        let all = std::mem::take(&mut first);
        // Shutdown: looked at when the channel changed (a closed channel counts
        // as a shutdown, as `wait_for` reports it). The change is marked seen
        // before the poll, so one that comes after it shows on the next wake-up.
        if !draining && (all || probe.has_changed().unwrap_or(true)) {
            probe.borrow_and_update();
            if stopped.as_mut().poll(cx).is_ready() {
                draining = true;
                shutdown(conn.as_mut());
                continue;
            }
        }
        if (all || timer.is_elapsed()) && timer.as_mut().poll(cx).is_ready() {
            let now = crate::clock::mono_ms();
            if idle_close_at.is_some_and(|at| now >= at) {
                tracing::debug!("idle connection did not close gracefully in time; closed");
                return Poll::Ready(());
            }
            let since = exchanges.idle_since();
            if let (Some(h), Some(since)) = (head_ms, since) {
                if now.saturating_sub(head_since(since)) >= h {
                    // A head not complete in time (a slow or silent client): the
                    // connection is closed, as hyper closes it on its own timeout.
                    tracing::debug!("request head not received in time; connection closed");
                    return Poll::Ready(());
                }
            }
            let busy = since.is_none();
            if let (true, Some(a)) = (busy, &activity) {
                // A response being sent with nothing written for `idle`: the client has
                // stopped reading (nginx's `send_timeout`). Its exchange would hold the
                // connection, and the upstream response behind it, for ever.
                let stalled = !exchanges.body_waiting.load(Ordering::Relaxed)
                    && exchanges.responding_since().is_some_and(|t| {
                        now.saturating_sub(t.max(a.written.load(Ordering::Relaxed))) >= idle_ms
                    });
                if stalled {
                    tracing::debug!("client stopped reading a response; connection closed");
                    return Poll::Ready(());
                }
            }
            if let (true, Some(progress)) = (busy, &exchanges.body_progress) {
                // HTTP/2: the same for a client that grants no flow-control window. Its
                // streams would hold their upstream responses for ever; the connection
                // goes, as HTTP/1's does (one stream cannot be cut off alone here).
                let stalled = !exchanges.body_waiting.load(Ordering::Relaxed)
                    && exchanges.responding_since().is_some_and(|t| {
                        now.saturating_sub(t.max(progress.load(Ordering::Relaxed))) >= idle_ms
                    });
                if stalled {
                    tracing::debug!("client granted no window for a response; connection closed");
                    return Poll::Ready(());
                }
            }
            if !draining && !busy && now.saturating_sub(last_activity(now)) >= idle_ms {
                draining = true;
                idle_close_at = Some(now + idle_ms);
                shutdown(conn.as_mut());
                // The timer now runs to the close's deadline (polled to register it;
                // if it is already due, the next turn sees it elapsed).
                timer.as_mut().reset(
                    next_check(true)
                        .min(tokio::time::Instant::now() + Duration::from_millis(idle_ms)),
                );
                let _ = timer.as_mut().poll(cx);
                continue;
            }
            if let (true, Some(a)) = (busy, &activity) {
                // A long request is not idleness; look again a full period later.
                a.read.store(now, Ordering::Relaxed);
            }
            let mut next = next_check(draining);
            if let Some(at) = idle_close_at {
                next = next.min(
                    tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(now)),
                );
            }
            timer.as_mut().reset(next);
            // Registers the new deadline (a deadline already past makes the
            // next turn of the loop see it elapsed).
            if timer.as_mut().poll(cx).is_ready() {
                continue;
            }
        }
        return Poll::Pending;
    })
    .await
}

/// A connection's exchanges, as its watchdog (`drive`) sees them.
pub(crate) struct Exchanges {
    /// Exchanges begun (request head complete) whose response has not ended yet, and
    /// in the high half ([`RESPONDING`] each) those of them whose response has been
    /// handed to hyper to send: one counter, one atomic update at each step.
    open: AtomicU64,
    /// When the last one ended, or the connection began (`clock::mono_ms`).
    ended: AtomicU64,
    /// When the latest response was handed over.
    responding_at: AtomicU64,
    /// HTTP/2 only (`None` for HTTP/1, whose writes stamp [`Activity`]): when hyper last
    /// asked a response body for a frame. With no flow-control window it waits for some
    /// first, so a client that grants none stops this clock. (One that grants a little
    /// lets hyper hand h2 the whole body, which h2 holds: the exchange ends, and the
    /// connection's idle close, which then has a deadline of its own, takes it.)
    body_progress: Option<AtomicU64>,
    /// Whether the latest poll of a response body found it waiting on its source (the
    /// upstream): a response that is not moving because the upstream is slow is not a
    /// client that stopped reading.
    pub(crate) body_waiting: AtomicBool,
}

/// One responding exchange in [`Exchanges::open`].
const RESPONDING: u64 = 1 << 32;

impl Exchanges {
    fn new(h2: bool) -> Exchanges {
        Exchanges {
            open: AtomicU64::new(0),
            ended: AtomicU64::new(crate::clock::mono_ms()),
            responding_at: AtomicU64::new(0),
            body_progress: h2.then(|| AtomicU64::new(0)),
            body_waiting: AtomicBool::new(false),
        }
    }

    /// Since when a response has been on its way out; None while none is.
    fn responding_since(&self) -> Option<u64> {
        if self.open.load(Ordering::Acquire) < RESPONDING {
            return None;
        }
        Some(self.responding_at.load(Ordering::Relaxed))
    }

    /// Since when no exchange has been open; None while one is.
    fn idle_since(&self) -> Option<u64> {
        // `ended` is stored before `open` drops to zero (see `Open::drop`).
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.ended.load(Ordering::Relaxed))
    }
}

/// One open exchange: from its request head to the end of its response body; and
/// whether its response has been handed to hyper to send.
pub(crate) struct Open(Arc<Exchanges>, bool);

impl Open {
    pub(crate) fn new(e: Arc<Exchanges>) -> Open {
        e.open.fetch_add(1, Ordering::Relaxed);
        Open(e, false)
    }

    /// The response is ready and goes to hyper now.
    pub(crate) fn responding(&mut self) {
        self.0
            .responding_at
            .store(crate::clock::mono_ms(), Ordering::Relaxed);
        self.0.open.fetch_add(RESPONDING, Ordering::Release);
        self.1 = true;
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0
            .ended
            .store(crate::clock::mono_ms(), Ordering::Relaxed);
        let n = if self.1 { 1 + RESPONDING } else { 1 };
        self.0.open.fetch_sub(n, Ordering::Release);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its exchange open until hyper has taken all of it
    /// (or dropped it: the client went away). A wrapper rather than
    /// `Body::with_guard`, which boxes its guard: one allocation less per request.
    struct Tracked {
        #[pin]
        body: crate::body::Body,
        open: Open,
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = <crate::body::Body as http_body::Body>::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let me = self.project();
        let x = &me.open.0;
        if let Some(p) = &x.body_progress {
            p.store(crate::clock::mono_ms(), Ordering::Relaxed);
        }
        let r = me.body.poll_frame(cx);
        x.body_waiting.store(r.is_pending(), Ordering::Relaxed);
        r
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// When a connection's bytes last moved (`clock::mono_ms`), reads and writes apart:
/// idleness counts either, the next request head's deadline only writes (see `drive`).
/// One store per read or write, as with a single stamp.
pub(crate) struct Activity {
    read: AtomicU64,
    written: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Activity {
        let now = crate::clock::mono_ms();
        Activity {
            read: AtomicU64::new(now),
            written: AtomicU64::new(now),
        }
    }

    /// When bytes last moved either way.
    pub(crate) fn moved(&self) -> u64 {
        self.read
            .load(Ordering::Relaxed)
            .max(self.written.load(Ordering::Relaxed))
    }
}

pin_project_lite::pin_project! {
    /// The connection's IO: replays sniffed bytes first and stamps activity on every
    /// successful read or write (for the idle watchdog).
    pub struct ConnIo<T> {
        #[pin]
        inner: T,
        prefix: Option<Bytes>,
        activity: Arc<Activity>,
    }
}

impl<T> ConnIo<T> {
    pub(crate) fn new(inner: T, prefix: Option<Bytes>, activity: Arc<Activity>) -> Self {
        ConnIo {
            inner,
            prefix: prefix.filter(|p| !p.is_empty()),
            activity,
        }
    }

    /// Puts bytes back in front of what is still to be read.
    pub(crate) fn unread(&mut self, b: Bytes) {
        self.prefix = match self.prefix.take() {
            Some(p) if !p.is_empty() => Some([b, p].concat().into()),
            _ => Some(b).filter(|b| !b.is_empty()),
        };
    }
}

impl<T: AsyncRead> AsyncRead for ConnIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if let Some(p) = this.prefix.as_mut() {
            let n = p.len().min(buf.remaining());
            buf.put_slice(&p.split_to(n));
            if p.is_empty() {
                *this.prefix = None;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity
                .read
                .store(crate::clock::mono_ms(), Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite> AsyncWrite for ConnIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity
                .written
                .store(crate::clock::mono_ms(), Ordering::Relaxed);
        }
        r
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity
                .written
                .store(crate::clock::mono_ms(), Ordering::Relaxed);
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// HTTP/2 streams in progress, so that shutdown can wait for them: hyper spawns each
/// stream as a task of its own, which aborting the connection's task does not reach.
#[derive(Default)]
pub struct StreamTasks {
    running: std::sync::atomic::AtomicUsize,
    ended: tokio::sync::Notify,
}

impl StreamTasks {
    /// Completes once no stream is running.
    async fn idle(&self) {
        loop {
            let ended = self.ended.notified();
            if self.running.load(Ordering::Acquire) == 0 {
                return;
            }
            ended.await;
        }
    }
}

/// Counts a stream's task as running until the task ends or is dropped.
struct StreamTask(Arc<StreamTasks>);

impl Drop for StreamTask {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.ended.notify_waiters();
        }
    }
}

/// hyper's executor for HTTP/2 server streams: `tokio::spawn`, counted in [`StreamTasks`].
#[derive(Clone)]
struct StreamExecutor(Arc<StreamTasks>);

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.running.fetch_add(1, Ordering::AcqRel);
        let task = StreamTask(self.0.clone());
        tokio::spawn(async move {
            let _task = task;
            fut.await;
        });
    }
}
