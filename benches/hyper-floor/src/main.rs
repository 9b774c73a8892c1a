//! A bare hyper reverse proxy: hyper's HTTP/1 server, hyper's client connection API
//! with a plain LIFO pool, one current-thread runtime and mimalloc, which is the same
//! stack lienthong runs on. No routing, no header rewriting, no limits, no metrics, no
//! timeouts: the cost of hyper and tokio alone, as the floor under lienthong's figure
//! in `benches/proxy.sh`. Not a gateway: it forwards anything to one upstream.
//!
//!   hyper-floor LISTEN_ADDR UPSTREAM_ADDR
use std::{cell::RefCell, rc::Rc};

use hyper::{body::Incoming, client::conn::http1::SendRequest, Request, Response};
use hyper_util::rt::TokioIo;

// The same allocator as lienthong: its wrapper of mimalloc, compiled from its source.
#[path = "../../../src/alloc.rs"]
mod alloc;
#[global_allocator]
static ALLOC: alloc::MiMalloc = alloc::MiMalloc;

type Pool = Rc<RefCell<Vec<SendRequest<Incoming>>>>;

async fn proxy(
    pool: Pool,
    upstream: &'static str,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
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
            let tcp = tokio::net::TcpStream::connect(upstream).await?;
            tcp.set_nodelay(true)?;
            let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::task::spawn_local(conn);
            s
        }
    };
    let rsp = sender.send_request(req).await;
    // Back in the pool at once; it is taken again only once hyper reports it ready,
    // that is once this response's body has been read.
    pool.borrow_mut().push(sender);
    Ok(rsp?)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: hyper-floor LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
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
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let pool = pool.clone();
            tokio::task::spawn_local(async move {
                let svc = hyper::service::service_fn(move |req| proxy(pool.clone(), upstream, req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
}
