//! A bare hyper reverse proxy: hyper's HTTP/1 server, hyper's client connection API
//! with a plain LIFO pool, one current-thread runtime and mimalloc, which is the same
//! stack lienthong runs on. No routing, no header rewriting, no limits, no metrics, no
//! timeouts: the cost of hyper and tokio alone, as the floor under lienthong's figure
//! in `benches/proxy.sh`. Not a gateway: it forwards anything to one upstream.
//!
//!   hyper-floor LISTEN_ADDR UPSTREAM_ADDR [in-task]
//!
//! By default each upstream connection is driven by a task of its own, as hyper's
//! client and lienthong's pool do, so every exchange hops between the client
//! connection's task and the upstream connection's. `in-task` drives the upstream
//! connection from the client connection's own task instead (no connection task, no
//! hop): the measurement behind the question whether an in-task upstream client would
//! make a hyper-based proxy cheaper.
use std::{
    cell::RefCell,
    future::{poll_fn, Future},
    pin::{pin, Pin},
    rc::Rc,
    task::{Context, Poll},
};

use hyper::{
    body::{Body, Bytes, Frame, Incoming, SizeHint},
    client::conn::http1::{Connection, SendRequest},
    Request, Response,
};
use hyper_util::rt::TokioIo;

// The same allocator as lienthong: its wrapper of mimalloc, compiled from its source.
#[path = "../../../src/alloc.rs"]
mod alloc;
#[global_allocator]
static ALLOC: alloc::MiMalloc = alloc::MiMalloc;

type Pool = Rc<RefCell<Vec<SendRequest<Incoming>>>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn proxy(
    pool: Pool,
    upstream: &'static str,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, BoxError> {
    // The newest connection that is ready for a request; closed ones are dropped.
    let pooled = {
        let mut p = pool.borrow_mut();
        p.retain(|s| !s.is_closed());
        p.iter()
            .rposition(|s| s.is_ready())
            .map(|i| p.swap_remove(i))
    };
    let mut sender = match pooled {
        Some(s) => s,
        None => {
            let up = connect(upstream).await?;
            tokio::task::spawn_local(up.conn);
            up.tx
        }
    };
    let rsp = sender.send_request(req).await;
    // Back in the pool at once; it is taken again only once hyper reports it ready,
    // that is once this response's body has been read.
    pool.borrow_mut().push(sender);
    Ok(rsp?)
}

/// An upstream connection: its sender and the connection itself, which the default mode
/// spawns as a task and the `in-task` mode polls wherever the pair is held.
struct Upstream {
    tx: SendRequest<Incoming>,
    conn: Connection<TokioIo<tokio::net::TcpStream>, Incoming>,
}
type InTaskPool = Rc<RefCell<Vec<Upstream>>>;

/// A new upstream connection and its sender; the caller decides who polls it.
async fn connect(upstream: &str) -> Result<Upstream, BoxError> {
    let tcp = tokio::net::TcpStream::connect(upstream).await?;
    tcp.set_nodelay(true)?;
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    Ok(Upstream { tx, conn })
}

/// A response body that polls its upstream connection whenever it is polled (the
/// connection reads the body into it) and puts the connection back in the pool once
/// the body has ended.
struct InTaskBody {
    body: Incoming,
    upstream: Option<Upstream>,
    pool: InTaskPool,
}

impl Body for InTaskBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let me = &mut *self;
        if let Some(up) = me.upstream.as_mut() {
            if Pin::new(&mut up.conn).poll(cx).is_ready() {
                me.upstream = None; // closed
            }
        }
        let frame = Pin::new(&mut me.body).poll_frame(cx);
        // hyper's server stops polling a body that says it has ended, so the end is
        // also seen on its last data frame.
        let ended = match &frame {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => me.body.is_end_stream(),
            _ => false,
        };
        if ended {
            if let Some(mut up) = me.upstream.take() {
                // One more poll lets the connection settle into idle.
                if Pin::new(&mut up.conn).poll(cx).is_pending() && !up.tx.is_closed() {
                    me.pool.borrow_mut().push(up);
                }
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The error of an exchange whose upstream connection ended under it.
fn ended(r: Result<(), hyper::Error>) -> BoxError {
    match r {
        Ok(()) => "upstream connection closed".into(),
        Err(e) => e.into(),
    }
}

async fn proxy_in_task(
    pool: InTaskPool,
    upstream: &'static str,
    req: Request<Incoming>,
) -> Result<Response<InTaskBody>, BoxError> {
    let pooled = pool.borrow_mut().pop();
    let mut up = match pooled {
        Some(u) => u,
        None => connect(upstream).await?,
    };
    let Upstream { tx, conn } = &mut up;
    // Until the connection is ready for this request, then until the response head:
    // the connection is polled here, in this task, alongside.
    poll_fn(|cx| {
        if let Poll::Ready(r) = Pin::new(&mut *conn).poll(cx) {
            return Poll::Ready(Err(ended(r)));
        }
        tx.poll_ready(cx).map_err(Into::into)
    })
    .await?;
    let mut exchange = pin!(tx.send_request(req));
    let rsp = poll_fn(|cx| {
        if let Poll::Ready(r) = exchange.as_mut().poll(cx) {
            return Poll::Ready(r.map_err(BoxError::from));
        }
        if let Poll::Ready(r) = Pin::new(&mut *conn).poll(cx) {
            // The connection ended: the exchange has its answer or its error now.
            return match exchange.as_mut().poll(cx) {
                Poll::Ready(x) => Poll::Ready(x.map_err(Into::into)),
                Poll::Pending => Poll::Ready(Err(ended(r))),
            };
        }
        exchange.as_mut().poll(cx).map_err(Into::into)
    })
    .await?;
    Ok(rsp.map(|body| InTaskBody {
        body,
        upstream: Some(up),
        pool,
    }))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: hyper-floor LISTEN_ADDR UPSTREAM_ADDR [in-task]");
        std::process::exit(2);
    };
    let in_task = match args.next().as_deref() {
        None => false,
        Some("in-task") => true,
        Some(other) => {
            eprintln!("hyper-floor: unknown mode {other:?} (the only one is in-task)");
            std::process::exit(2);
        }
    };
    let upstream: &'static str = Box::leak(upstream.into_boxed_str());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
        let pool: Pool = Rc::default();
        let in_task_pool: InTaskPool = Rc::default();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let io = TokioIo::new(tcp);
            let http = hyper::server::conn::http1::Builder::new();
            if in_task {
                let pool = in_task_pool.clone();
                tokio::task::spawn_local(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        proxy_in_task(pool.clone(), upstream, req)
                    });
                    let _ = http.serve_connection(io, svc).await;
                });
            } else {
                let pool = pool.clone();
                tokio::task::spawn_local(async move {
                    let svc =
                        hyper::service::service_fn(move |req| proxy(pool.clone(), upstream, req));
                    let _ = http.serve_connection(io, svc).await;
                });
            }
        }
    });
}
